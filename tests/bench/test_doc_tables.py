"""The one replacer of generated doc tables (README.md's bench table, docs/deploy.md's capacity table)."""

import pytest

from bench import capacity, readme_table


def test_replace_block_swaps_only_the_marked_text_for_either_doc():
    text = f"intro\n{capacity.START}\nold\n{capacity.END}\noutro\n"
    new = readme_table.replace_block(text, "\nnew table\n", capacity.START, capacity.END, where="deploy.md")
    assert new == f"intro\n{capacity.START}\nnew table\n{capacity.END}\noutro\n"


@pytest.mark.parametrize("text", ["no markers", f"{readme_table.END} {readme_table.START}",
                                  f"{readme_table.START} {readme_table.END} {readme_table.START}"])
def test_replace_block_refuses_missing_repeated_or_reversed_markers(text):
    with pytest.raises(ValueError, match="README.md must hold"):
        readme_table.replace_block(text, "table", where="README.md")
