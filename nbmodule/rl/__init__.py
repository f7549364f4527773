"""Meta reinforcement learning: MAML-TRPO (Finn et al. 2017) on batched environments, in pure torch.

- :mod:`.envs`: the task families (2D navigation in torch; HalfCheetah Vel/Dir in :mod:`.cheetah`);
- :mod:`.policy`: the Gaussian MLP policy with per-task weights for batched rollouts;
- :mod:`.sampler`: trajectories of every task of a meta-batch at once;
- :mod:`.returns`: returns, the linear feature baseline, GAE, per-task normalisation;
- :mod:`.maml`: the REINFORCE inner step, the estimators ``maml`` / ``lvc`` / ``dice``, the meta-objective;
- :mod:`.trpo`: conjugate gradient, Hessian-vector products, the TRPO step with line search;
- :mod:`.fisher`: TRPO's exact curvature through the adaptation as a Fisher pull-back (no double backprop);
- :mod:`.algo`: one meta-iteration and the adaptation test protocol.
"""
from .algo import MetaRLSettings, Timer, evaluate_adaptation, evaluation_lrs, meta_iteration, trpo_update
from .fisher import quadratic_model
from .envs import ENV_NAMES, MetaEnv, Nav2D, make_env
from .maml import ESTIMATORS, HVP_MODES, MetaBatch, StepData, adapt, inner_loss, meta_objective
from .policy import MIN_LOG_STD, GaussianMLPPolicy, expand_params, gaussian_kl, log_prob
from .returns import compute_advantages, discounted_returns, fit_linear_baseline, gae, linear_baseline
from .sampler import Batch, sample_trajectories
from .trpo import TRPOInfo, conjugate_gradient, hessian_vector_product, trpo_step

__all__ = [
    "MetaRLSettings", "Timer", "evaluate_adaptation", "evaluation_lrs", "meta_iteration", "trpo_update",
    "quadratic_model", "MIN_LOG_STD",
    "ENV_NAMES", "MetaEnv", "Nav2D", "make_env",
    "ESTIMATORS", "HVP_MODES", "MetaBatch", "StepData", "adapt", "inner_loss", "meta_objective",
    "GaussianMLPPolicy", "expand_params", "gaussian_kl", "log_prob",
    "compute_advantages", "discounted_returns", "fit_linear_baseline", "gae", "linear_baseline",
    "Batch", "sample_trajectories",
    "TRPOInfo", "conjugate_gradient", "hessian_vector_product", "trpo_step",
]
