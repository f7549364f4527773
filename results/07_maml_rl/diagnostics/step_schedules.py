"""Diagnostic (run from the repository root after the sweep, which leaves the checkpoints in runs/paper/07_maml_rl/):
the 500-iteration MAML (and pretrained) nav2d policies on the held-out goals under other test-time
step schedules than the paper's (0.1, 0.05, 0.05): constant 0.1, constant 0.05, 5 steps."""
import json, sys
import torch
from dataclasses import replace
from nbmodule.engines import maml_rl as E
from nbmodule.rl import algo
from nbmodule.rl.envs import make_env

torch.set_num_threads(1)
cfg = E.MamlRLConfig.from_values(json.load(open("runs/paper/07_maml_rl/config.json"))["config"])
env = make_env("nav2d", horizon=cfg.horizon, device=torch.device("cpu"))
goals = env.sample_tasks(cfg.eval_goals, torch.Generator().manual_seed(cfg.eval_seed))
schedules = {"paper 0.1,0.05,..": None, "const 0.1": 0.1, "const 0.05": 0.05}
orig = algo.evaluation_lrs
out = {}
for method in ("maml", "pretrained"):
    for name, const in schedules.items():
        algo.evaluation_lrs = orig if const is None else (lambda lr, steps, c=const: [c] * steps)
        per_seed = []
        for seed in cfg.seeds:
            st = torch.load(f"runs/paper/07_maml_rl/checkpoints/nav2d_{method}_s{seed}.pt", weights_only=False)["state"]
            policy = E._initial_policy(env, cfg, seed, torch.device("cpu"))
            gen = torch.Generator().manual_seed(7919 * cfg.eval_seed + seed)
            lr = 0.1 if const is None else const
            r = algo.evaluate_adaptation(env, policy, st["params"], goals, replace(cfg.settings(), inner_lr=lr),
                                         trajectories=cfg.eval_trajectories, steps=5, generator=gen)["returns"]
            per_seed.append(r.mean(1))
        m = torch.stack(per_seed).mean(0)
        out[f"{method} {name}"] = [round(float(v), 2) for v in m]
        print(method, name, out[f"{method} {name}"], flush=True)
algo.evaluation_lrs = orig
json.dump(out, open("results/07_maml_rl/diagnostics/step_schedules.json", "w"), indent=1)
