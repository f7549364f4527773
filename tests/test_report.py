"""The results report: the README's Results section is what `python -m nbmodule report results/` renders from the
committed run folders, every committed result says how it was made, and missing, partial and multi-seed
results render as such."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nbmodule.cli import main as cli
from nbmodule.runs import RunDir
from nbmodule.viz.paper import protocol_differences, verdict
from nbmodule.viz.report import (BEGIN, COMMAND_FIELDS, END, EXPECTED, _limit, read_command, readme_block,
                                 render_folder, render_results)
from nbmodule.viz.rundata import run_progress, seed_metrics

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def test_readme_results_section_is_the_report_of_results():
    """Fails when a number in the README's Results section and the committed results/ disagree."""
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    rendered = render_results(RESULTS)
    assert block.strip() == rendered.strip(), (
        "README.md's results block differs from the report of results/: run "
        "`python -m nbmodule report results/ --readme README.md --write`")


@pytest.mark.parametrize("folder", sorted(p.name for p in RESULTS.iterdir() if p.is_dir()))
def test_every_committed_result_says_how_it_was_made_and_holds_no_checkpoint(folder):
    path = RESULTS / folder
    command = read_command(path)
    missing = [f for f in ("command", *COMMAND_FIELDS) if not command.get(f)]
    assert not missing, f"{path}/COMMAND.md lacks {', '.join(missing)}"
    assert command["command"].startswith(("python -m nbmodule run ", "python -m nbmodule sweep ")), command["command"]
    assert not list(path.rglob("checkpoints")), f"{path} holds checkpoints"


def _fewshot_run(folder: Path, seed: int, acc: float | None, iterations: int = 1000, logged: int = 1000) -> None:
    run = RunDir(folder)
    cfg = {"dataset": "omniglot", "n_way": 5, "k_shot": 1, "omniglot_split": "background", "meta_batch_size": 8,
           "meta_iterations": iterations, "first_order": False, "downsample": "maxpool", "eval_episodes": 600,
           "val_episodes": 100, "seed": seed, "inner_steps": 1, "inner_steps_test": 3, "inner_lr": 0.4,
           "meta_lr": 0.001}
    (run.path / "config.json").write_text(json.dumps(
        {"config": cfg, "status": "complete" if acc is not None else "running", "study": "fewshot"}))
    run.log_curve("fewshot_val", [{"run": "omniglot_5way_1shot", "seed": seed, "step": s, "val_loss": 1.0,
                                   "val_acc": 0.5 + s / 10_000} for s in range(0, logged + 1, 100)])
    if acc is not None:
        run.write_metrics({"omniglot_5way_1shot_acc": acc, "omniglot_5way_1shot_ci95": 1.0,
                           "omniglot_lake20_error": 40.0 - seed})


def test_seed_folders_give_mean_and_student_t_interval(tmp_path):
    folder = tmp_path / "results" / "05_maml_fewshot"
    for seed, acc in enumerate((90.0, 91.0, 92.0)):
        _fewshot_run(folder / f"seed{seed}", seed, acc)
    mean, ci, n = seed_metrics(folder)["omniglot_5way_1shot_acc"]
    # values 90, 91, 92: std 1, t(0.975, 2 dof) = 4.3027
    assert (mean, n) == (91.0, 3) and math.isclose(ci, 4.302653 / math.sqrt(3), rel_tol=1e-5)
    text = render_folder(folder)
    assert "status: complete" in text and "3 seed folders" in text
    assert "| test accuracy (%) | 91.0 ± 2.5 |" in text
    assert "budget: meta-iterations 1 000 (paper 60 000)" in text and "protocol: Omniglot split background" in text
    assert "**not reproduced**: 7.7 worse than the paper (the run differs in protocol and budget)" in text


def test_missing_and_partial_results_say_so(tmp_path):
    root = tmp_path / "results"
    folder = root / "05_maml_fewshot_omniglot"
    _fewshot_run(folder, 0, None, iterations=15000, logged=3000)
    assert run_progress(folder).describe() == "partial: 3 000 of 15 000 iterations"
    text = render_results(root)
    assert "status: partial: 3 000 of 15 000 iterations" in text
    assert "last validation accuracy (%, 100 episodes, not a test score) | 80.0 at iteration 3000" in text
    assert "| 5-way 1-shot accuracy (%) | 98.7 ± 0.4 (Finn et al. 2017, Table 1) | - |" in text
    for name in EXPECTED:  # every expected result has its section, saying it has not run
        if name != folder.name:
            assert f"(`results/{name}/`)\n\nstatus: not run yet." in text
    # a seed still running beside finished ones: counted, and left out of the means
    seeds = root / "02_x"
    _fewshot_run(seeds / "seed0", 0, 90.0)
    _fewshot_run(seeds / "seed1", 1, None, logged=400)
    assert run_progress(seeds).describe() == "partial: 1 of 2 runs complete, 400 of 1 000 iterations"
    assert seed_metrics(seeds)["omniglot_5way_1shot_acc"][2] == 1
    # a run that wrote its config and checkpoints only (checkpoints are not committed): no made-up count
    quiet = RunDir(root / "04_maml_sampling_3d")
    (quiet.path / "config.json").write_text(json.dumps({"config": {"meta_iterations": 50000}, "status": "running"}))
    assert run_progress(quiet.path).describe() == "partial: no curve or metrics.json written yet"


def test_a_new_folder_appears_in_its_notebooks_place(tmp_path):
    root = tmp_path / "results"
    _fewshot_run(root / "05_maml_fewshot_miniimagenet", 0, 50.0)
    text = render_results(root)
    assert text.index("results/05_maml_fewshot_omniglot/") < text.index("results/05_maml_fewshot_miniimagenet/") \
        < text.index("results/07_maml_rl/")


def test_verdicts():
    assert verdict(98.5, 0.5, 98.7, 0.4).startswith("**reproduced** (within the paper's interval)")
    assert verdict(-4.91, 8.52, -3.33).startswith("**reproduced** (the paper's value is within our 95% CI)")
    assert verdict(-6.03, 0.55, -3.23) == "**not reproduced**: 2.80 worse than the paper"
    assert verdict(0.2, 0.01, 0.3, higher_is_better=False) == "**not reproduced**: 0.10 better than the paper"
    assert verdict(float("nan"), float("nan"), 1.0) == "not measured yet"
    # the forgetting limit (02): every whole interval under it, one whole interval over it, or neither
    assert _limit((3.0, 1.0), (4.0, 0.5), limit=5.0) == "**met** (worst task 4.0%)"
    assert _limit((6.0, 0.5), (1.0, 1.0), limit=5.0) == "**not met**: 6.0%, 1.0 points over"
    assert _limit((4.0, 2.0), limit=5.0).startswith("**undecided**")
    assert protocol_differences({"iterations": 200, "horizon": 100, "seeds": [0]}, "maml_rl/cheetah") == [
        ("budget", "meta-iterations 200 (paper 500)"), ("protocol", "horizon 100 (paper 200)")]


def test_halfcheetah_velocity_is_judged_against_the_figure_within_its_reading_error(tmp_path):
    """Goal velocity has no table in the paper: its anchor is read off Figure 5 and says so, and a mean is
    judged reproduced only within that reading error (+- 10) or within its own interval."""
    folder = tmp_path / "results" / "07_maml_rl_cheetah_vel"
    run = RunDir(folder)
    cfg = {"envs": ["cheetah_vel"], "seeds": [0], "meta_batch_size": 40, "trajectories": 20, "horizon": 200,
           "iterations": 500, "eval_goals": 40, "eval_trajectories": 20, "eval_steps": 3}
    (run.path / "config.json").write_text(json.dumps({"config": cfg, "status": "complete", "study": "maml_rl"}))
    returns = (-150.0, -85.0, -60.0, -90.0)  # 20 under, 5 under, 15 over, 15 under the figure's values
    run.write_metrics({f"cheetah_vel_return_{k}step": v for k, v in enumerate(returns)})
    text = render_folder(folder)
    assert "| MAML, Finn et al. 2017, Figure 5, read approximately | -130 | -80 | -75 | -75 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| HalfCheetah goal velocity, MAML return")]
    assert len(rows) == 4
    assert all(f"| {v} ± 10 (Finn et al. 2017, Figure 5, read approximately) |" in row
               for v, row in zip((-130, -80, -75, -75), rows))
    # the paper evaluated its best policy by training return (App. A.2), the study its last: said in every row
    assert all("| protocol: evaluated policy last iteration (paper best training return) |" in row for row in rows)
    assert rows[0].endswith("| **not reproduced**: 20.00 worse than the figure's value (the run differs in protocol) |")
    assert rows[1].endswith("| **reproduced** (within ± 10 of the value read off the figure) |")
    assert rows[2].endswith("| **not reproduced**: 15.00 better than the figure's value (the run differs in protocol) |")
    assert rows[3].endswith("| **not reproduced**: 15.00 worse than the figure's value (the run differs in protocol) |")


def test_the_papers_model_selection_is_compared_without_that_protocol_difference(tmp_path):
    folder = tmp_path / "results" / "07_maml_rl"
    run = RunDir(folder)
    cfg = {"envs": ["nav2d"], "seeds": [0, 1, 2], "meta_batch_size": 20, "trajectories": 20, "horizon": 100,
           "iterations": 500, "inner_lr": 0.1, "max_kl": 0.01, "eval_steps": 3}
    (run.path / "config.json").write_text(json.dumps({"config": cfg, "status": "complete", "study": "maml_rl"}))
    last, best = (-38.0, -12.0, -12.0, -10.0), (-40.0, -11.5, -4.0, -3.0)
    run.write_metrics({**{f"nav2d_return_{k}step": v for k, v in enumerate(last)},
                       **{f"nav2d_return_{k}step_ci95": 1.0 for k in range(4)},
                       **{f"nav2d_maml_best_return_{k}step": v for k, v in enumerate(best)},
                       **{f"nav2d_maml_best_return_{k}step_ci95": 1.0 for k in range(4)}})
    text = render_folder(folder)
    assert "| MAML, best training return (App. A.2) | -40.00 ± 1.00 | -11.50 ± 1.00 | -4.00 ± 1.00 | -3.00 ± 1.00 |" \
        in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 2D navigation, MAML")}
    assert "protocol: evaluated policy last iteration (paper best training return)" in rows[
        "| 2D navigation, MAML return after 2 steps"]
    chosen = rows["| 2D navigation, MAML (best training return) return after 2 steps"]
    assert "| none | **reproduced** (the paper's value is within our 95% CI) |" in chosen


def test_a_stopped_rl_run_shows_each_training_loop_so_far(tmp_path):
    folder = tmp_path / "results" / "07_maml_rl_cheetah_dir"
    run = RunDir(folder)
    cfg = {"envs": ["cheetah_dir"], "seeds": [0], "iterations": 200, "pretrain_iterations": 200}
    (run.path / "config.json").write_text(json.dumps({"config": cfg, "status": "running", "study": "maml_rl"}))
    run.write_curve("train", [{"run": "cheetah_dir_maml", "seed": 0, "iteration": i, "return_0step": -60.0 + i,
                               "return_1step": 10.0 * i} for i in (1, 2, 3)])
    assert run_progress(folder).describe() == "partial: 3 of 200 iterations"
    text = render_folder(folder)
    assert "| cheetah_dir_maml | 0 | 3 of 200 | -57.00 | 30.00 |" in text
    assert "not the test protocol" in text and "| quantity | paper |" not in text  # no verdict before evaluation


def test_a_finding_in_command_md_is_rendered_under_its_section(tmp_path):
    folder = tmp_path / "results" / "05_maml_fewshot"
    _fewshot_run(folder, 0, 93.0)
    (folder / "COMMAND.md").write_text("# t\n\n```bash\npython -m nbmodule run fewshot --profile cpu\n```\n\n"
                                       "- commit: abc\n- finding: the second step overshoots;\n  see the figure\n"
                                       "- data: real\n")
    assert read_command(folder)["finding"] == "the second step overshoots; see the figure"
    text = render_folder(folder)
    assert text.endswith("\n\nFinding (`results/05_maml_fewshot/COMMAND.md`): the second step overshoots; see the "
                         "figure\n")
    assert "data: real" in text


def test_check_fails_when_the_readme_disagrees_and_write_repairs_it(tmp_path, capsys):
    root = tmp_path / "results"
    _fewshot_run(root / "05_maml_fewshot" / "seed0", 0, 93.25)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\n\nold numbers: 93.3\n\n{END}\n\n## after\n")
    assert cli(["report", str(root), "--readme", str(readme), "--check"]) == 1
    assert "+| test accuracy (%) | 93.2 ± 1.0 |" in capsys.readouterr().out
    assert cli(["report", str(root), "--readme", str(readme), "--write"]) == 0
    assert cli(["report", str(root), "--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{END}\n\n## after\n") and "old numbers" not in text
    capsys.readouterr()
    assert cli(["report", str(root), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == render_results(root).strip()


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "nowhere")]) == 2
    assert "error: results folder not found" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("no markers\n")
    assert cli(["report", str(tmp_path), "--readme", str(tmp_path / "README.md"), "--check"]) == 2
    assert "README.md: expected one line" in capsys.readouterr().err


def test_mtml_seeds_judge_the_claim_by_their_intervals(tmp_path):
    folder = tmp_path / "results" / "03_mtml"
    for seed in range(3):
        run = RunDir(folder / f"seed{seed}")
        cfg = {"seed": seed, "held_out": "normals", "synthetic": True, "backbone": "mobilenet_v3_small"}
        (run.path / "config.json").write_text(json.dumps({"config": cfg, "status": "complete"}))
        # normals are judged by the mean angle error (lower is better): MTML clearly better, at equal compute not
        run.write_metrics({"single_normals_mean": 40.0 + seed, "mtl_normals_mean": 30.0 + seed,
                           "mtml_normals_mean": 20.0 + seed, "mtml_compute_normals_mean": 29.0 + 3 * seed,
                           "mtl_delta_m": -10.0, "mtml_delta_m": 5.0 + seed, "mtml_steps_to_target": 20})
    text = render_folder(folder)
    assert "| from the MTML model | 21.00 ± 2.48 | 20.0 ± 0.0 | 6.0 ± 2.5 | - |" in text
    assert "**supported**: MTML better than MTL by 10.00, intervals disjoint" in text
    assert "**not shown**: MTML at equal compute and MTL differ by 1.00, their 95% intervals overlap" in text


def test_diverged_fine_tuning_is_named_and_the_verdict_uses_a_defined_measure(tmp_path):
    """A null 10-step mean (fine-tuning diverged on some tasks) renders as '-', the runs and task counts are
    named from parameter_space.csv, and the verdict falls back to the 1-step held-out MSE."""
    folder = tmp_path / "results" / "04_maml_sampling_3d"
    run = RunDir(folder)
    cfg = {"family": "3d", "regimes": ["uniform", "weighted"], "seeds": [0, 1], "eval_steps": 10,
           "meta_iterations": 100}
    (run.path / "config.json").write_text(json.dumps({"config": cfg, "status": "complete"}))
    metrics = {}
    for r, base in (("uniform", 1.0), ("weighted", 2.0)):
        for c in ("mse_1step", "mse_10step", "heldout_mse_1step", "heldout_mse_10step"):
            metrics[f"{r}_{c}"], metrics[f"{r}_{c}_ci95"] = base, 0.1
    metrics["uniform_heldout_mse_10step"] = metrics["uniform_heldout_mse_10step_ci95"] = None
    run.write_metrics(metrics)
    rows = ["run,seed,amplitude,phase,frequency,mse_1step,mse_10step,mse_0step"]
    rows += [f"uniform,0,1.0,0.0,1.0,1.0,{v},1.0" for v in ("inf", "", "0.5")]
    rows += [f"weighted,1,1.0,0.0,1.0,1.0,0.5,1.0" for _ in range(2)]
    (folder / "parameter_space.csv").write_text("\n".join(rows) + "\n")
    text = render_folder(folder)
    assert "| `uniform` | 1.000 ± 0.100 | 1.000 ± 0.100 | 1.000 ± 0.100 | - |" in text
    assert "`uniform` seed 0: 2 of 3 grid tasks" in text and "`weighted` seed" not in text
    assert "held-out MSE after 1 step; 10 steps diverged on some tasks" in text
    assert "above: `weighted`" in text
