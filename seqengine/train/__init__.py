"""Training sequence models: model pieces, losses, optimizers, built-in tasks, the trainer, sampling.

    from seqengine.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(task="adding", cell="lstm", steps=500), out_dir="runs/adding")
    trainer.fit()

The command line `seqengine train` / `seqengine sample` runs the same code.
"""

from .model import LOSSES, SequenceModel, cross_entropy, mean_squared_error
from .optim import SGD, Adam, clip_grad_norm, global_norm, lr_at, make_optimizer
from .sampling import sample
from .tasks import AddingTask, CharTask, CopyTask, CorpusError, Vocabulary, make_task, read_corpus
from .trainer import (TASK_DEFAULTS, TrainConfig, Trainer, TrainingError, model_from_checkpoint,
                      read_checkpoint, vocabulary_of)

__all__ = ["LOSSES", "SequenceModel", "cross_entropy", "mean_squared_error", "SGD", "Adam", "clip_grad_norm",
           "global_norm", "lr_at", "make_optimizer", "sample", "AddingTask", "CharTask", "CopyTask",
           "CorpusError", "Vocabulary", "make_task", "read_corpus", "TASK_DEFAULTS", "TrainConfig", "Trainer",
           "TrainingError", "model_from_checkpoint", "read_checkpoint", "vocabulary_of"]
