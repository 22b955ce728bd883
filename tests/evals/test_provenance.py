"""evals/provenance.py: the git revision, machine and date every result is stamped with."""

import datetime
import platform
import re

from evals.provenance import REPO, git_commit, git_output, machine_summary, utc_now


def test_git_commit_is_this_checkout_or_none_without_git():
    commit = git_commit()
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", commit or ""), commit
        assert git_output("rev-parse", "--verify", "HEAD") == commit
    else:                                    # a copied tree (device machines): no revision, no crash
        assert commit is None


def test_git_output_is_none_when_git_fails():
    assert git_output("rev-parse", "--verify", "refs/heads/no-such-branch-for-provenance") is None


def test_machine_summary_keeps_the_eval_json_format():
    # The eval JSONs have always held "<machine> <processor> N threads" (two spaces where no processor).
    expected = f"{platform.machine()} {platform.processor() or ''} 3 threads".strip()
    assert machine_summary("3 threads") == expected
    assert machine_summary() == f"{platform.machine()} {platform.processor() or ''}".strip()


def test_utc_now_is_iso_utc_to_the_second():
    stamp = datetime.datetime.fromisoformat(utc_now())
    assert stamp.utcoffset() == datetime.timedelta(0) and stamp.microsecond == 0
