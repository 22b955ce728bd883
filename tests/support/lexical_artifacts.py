"""A small trained static artifact with a lexical part, for tests of what is built on top of one."""

from evals.lexical import attach_lexical
from tests.support.datasets import synthetic_dataset
from training.data import load_dataset
from training.fit import TrainConfig, train


def small_lexical_artifact(root, config):
    """(train_ds, artifact, result, record, head_dev): 120 synthetic train prompts, 45 dev, a tiny head with
    the part forced on (mode "on") under the given LexicalConfig; head_dev is the head's dev metrics alone."""
    train_ds = load_dataset(synthetic_dataset(root / "train", n=120))
    dev_ds = load_dataset(synthetic_dataset(root / "dev", n=45, seed=1))
    artifact, result = train(train_ds, dev_ds, config=TrainConfig(hidden=8, folds=2, max_epochs=20, patience=20),
                             show_progress=False)
    head_dev = result["head"]
    record = attach_lexical(artifact, result, train_ds, dev_ds, mode="on", config=config)
    return train_ds, dev_ds, artifact, result, record, head_dev
