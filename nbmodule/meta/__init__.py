"""The functional meta-learning engine: MAML's inner/outer loop and task-weighted sampling.

``adapt`` / ``meta_loss`` / ``finetune_curve`` (:mod:`.functional`) work on any ``nn.Module`` with parameters
passed as a dict of tensors (``torch.func.functional_call``); ``MAML`` (:mod:`.maml`) is the learn2learn-like
wrapper over them. Imports go one way: ``functional`` <- ``strategy`` <- ``maml``.
``choose_strategy`` measures how the tasks of a meta-batch should run (loop, vmap, or the task-batched program
of :mod:`nbmodule.meta.batched`) and returns a ``StrategyChoice`` to pass as ``strategy=`` and to record.
``PriorityQueue`` and ``sample_tasks`` implement the six task-sampling regimes of task-weighted MAML.
"""
from .functional import InnerLR, LossFn, adapt, finetune_curve, forward, meta_loss, resolve_strategy
from .maml import MAML, Learner
from .sampling import REGIMES, PriorityQueue, TaskDraw, epsilon_at, sample_tasks
from .strategy import StrategyChoice, choose_strategy

__all__ = [
    "MAML", "Learner", "LossFn", "InnerLR", "adapt", "meta_loss", "finetune_curve", "forward", "resolve_strategy",
    "StrategyChoice", "choose_strategy",
    "REGIMES", "PriorityQueue", "TaskDraw", "epsilon_at", "sample_tasks",
]
