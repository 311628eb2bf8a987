"""`python -m ddpm reproduce`: the plan made ahead of the notebook, and CI's rehearsal of the whole reference run."""
import json
import shutil

import pytest

from ddpm import evaluate
from ddpm.config import REPO_ROOT
from ddpm.plan import build_plan
from ddpm.reproduce import (NOTEBOOK, NotebookFailed, artifacts, execute_notebook, make_evaluation, plan_is_made,
                            reproduce, stored_result)
from ddpm.show import README_END, README_START
from ddpm.train import train


def test_a_stored_result_is_reused_until_the_checkpoint_or_the_protocol_changes(tiny_config, monkeypatch):
    from test_metrics import StandInFeatures

    plan = build_plan(tiny_config.replace(fid_samples=4, fid_compare_samples=4, fid_real=8, fid_batch_size=4))
    spec = next(e for e in plan.evaluations_of("improved") if e.sampler == "dpmpp2m" and e.weights == "ema")
    feature = StandInFeatures()
    calls = []
    evaluate_run = evaluate.evaluate_run
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: calls.append(k) or evaluate_run(*a, **k))

    train(plan.run_config("improved"), verbose=False)
    first = make_evaluation(plan, spec, device="cpu", feature=feature)
    again = make_evaluation(plan, spec, device="cpu", feature=feature)
    assert len(calls) == 1 and again["fid"] == first["fid"] and again["created"] == first["created"]
    assert calls[0]["num_samples"] == 4 and calls[0]["num_real"] == 8 and calls[0]["steps"] == spec.steps
    assert stored_result(plan, spec) is None  # another feature network (the real Inception) has no result yet
    # more real images: another protocol, evaluated anew
    other = build_plan(plan.config.replace(fid_real=12))
    make_evaluation(other, next(e for e in other.evaluations if e.name == spec.name and e.run == "improved"),
                    device="cpu", feature=feature)
    assert len(calls) == 2
    # the run trained on: its checkpoint's step changed, so the stored result is stale
    longer = plan.config.replace(train_steps=plan.config.train_steps + 2)
    train(longer, verbose=False)
    assert make_evaluation(build_plan(longer), spec, device="cpu", feature=feature)["step"] == longer.train_steps
    assert len(calls) == 3


def test_reproduce_rejects_an_unknown_phase_in_one_line(capsys):
    from ddpm.cli import main

    assert main(["reproduce", "--profile", "smoke", "--phases", "train,deploy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --phases: unknown phase(s) ['deploy']") and "\n" not in err


def test_a_failing_notebook_cell_is_one_clear_error_and_keeps_the_partial_notebook(tmp_path):
    import nbformat

    notebook = tmp_path / "broken.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')"),
                                                   nbformat.v4.new_code_cell("1 / 0")]), notebook)
    out = tmp_path / "out" / "broken.ipynb"
    with pytest.raises(NotebookFailed, match="broken.ipynb failed in cell 1: ZeroDivisionError: division by zero") as error:
        execute_notebook(notebook, out, "fingerprint")
    partial = nbformat.read(out.with_suffix(".failed.ipynb"), as_version=4)
    assert "ran" in partial.cells[0].outputs[0]["text"] and not out.exists()
    assert str(out.with_suffix(".failed.ipynb")) in str(error.value)


def _numbers(summary: dict) -> tuple[list, list]:
    evaluations = [(r["run"], r["weights"], r["sampler"], r["steps"], r["num_generated"], r["fid"], r["kid_mean"])
                   for r in summary["evaluations"]]
    training = [(r["run"], r["steps"], r["final loss"]) for r in summary["training"]]
    return evaluations, training


def test_REHEARSAL_reproduce_smoke_end_to_end_then_the_notebook_alone_agrees(tmp_path, monkeypatch):
    """CI's rehearsal of the reference run: the smoke plan trained and evaluated, the notebook executed on top of it
    (making nothing again), the results and the README block written; then the notebook alone, on empty run folders,
    makes the same runs and the same numbers. About 4 minutes on 2 CPU cores."""
    monkeypatch.setenv("DDPM_PROFILE", "smoke")
    monkeypatch.setenv("DDPM_PROGRESS", "0")
    monkeypatch.setenv("DDPM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDPM_FIGURES_DIR", str(tmp_path / "figures"))
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", readme)
    out = tmp_path / "solution.smoke.ipynb"
    said = []

    plan = reproduce("smoke", phases=("train", "evaluate"), say=said.append)
    assert plan_is_made(plan)
    made = artifacts(plan)
    assert len(made) == len(plan.runs) + len(plan.evaluations)  # a checkpoint per run, a result per evaluation

    said.clear()
    reproduce("smoke", notebook_out=out, readme=readme, say=said.append)
    assert artifacts(plan) == made, "the notebook trained or evaluated what the plan had already made"
    assert any("it trained and evaluated nothing itself" in line for line in said)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    printed = "".join("".join(o.get("text", "")) for o in outputs)
    assert printed.count("reusing the finished run") == len(plan.runs)
    summary = json.loads((tmp_path / "figures" / "smoke" / "results.json").read_text())
    assert [(r["run"], evaluate.result_name(r)) for r in summary["evaluations"]] == [
        (plan.run_dir(e.run).name, e.name) for e in plan.evaluations]
    assert "ddpm_images_per_s" in summary  # the notebook's own figures are kept by the results phase
    assert summary["floor"]["sampler"] == "real" and summary["floor"]["num_generated"] == plan.floor.num_generated
    block = readme.read_text().split(README_START)[1].split(README_END)[0]
    assert "profile `smoke`" in block and "smoke-unet-craters-32px" in block

    said.clear()  # a second reproduce keeps everything, the executed notebook included
    reproduce("smoke", notebook_out=out, readme=readme, say=said.append)
    assert artifacts(plan) == made
    assert sum("kept" in line for line in said) == len(plan.runs) + len(plan.evaluations) + 1

    # The notebook alone, on empty run folders, makes what it needs with the same specs: the same numbers
    monkeypatch.setenv("DDPM_RUNS_DIR", str(tmp_path / "alone" / "runs"))
    monkeypatch.setenv("DDPM_FIGURES_DIR", str(tmp_path / "alone" / "figures"))
    execute_notebook(NOTEBOOK, tmp_path / "alone.ipynb", "alone")
    alone = json.loads((tmp_path / "alone" / "figures" / "smoke" / "results.json").read_text())
    (evaluations, training), (alone_evaluations, alone_training) = _numbers(summary), _numbers(alone)
    assert alone_training == training
    assert [e[:5] for e in alone_evaluations] == [e[:5] for e in evaluations]
    flat = lambda rows: [value for row in rows for value in row[5:]]  # noqa: E731
    assert flat(alone_evaluations) == pytest.approx(flat(evaluations), rel=1e-4)
