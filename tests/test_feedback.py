"""What a run tells its user: first_step_s per job, the validation loss on the progress bar, samples.txt."""
from __future__ import annotations

import json

import torch

from ablate import load_run
from ablate.training import feedback
from ablate.training.loop import train
from tests.conftest import TINY, compose
from tests.test_command_line import both_orders  # noqa: F401  (session fixture: two tiny 2-job sweeps)


def summaries(sweep) -> list[dict]:
    return [json.loads((sweep / str(job) / "summary.json").read_text()) for job in (0, 1)]


def test_first_step_s_counts_from_each_jobs_own_start(both_orders):  # noqa: F811
    for sweep, _ in both_orders.values():
        first, second = summaries(sweep)
        # Job 1 starts after job 0 wrote its summary and reaches its first step before writing its own,
        # so its figure fits between the two writes; counted from the process's launch it would also
        # hold all of job 0 (the figure grew 4.8, 85.7, 139, 205 s over a sweep before).
        between = (sweep / "1" / "summary.json").stat().st_mtime - (sweep / "0" / "summary.json").stat().st_mtime
        assert 0 < second["first_step_s"] <= between + 0.01
        assert 0 < first["first_step_s"]  # the first job counts from launch: imports are part of its wait


def test_job_clock_marks_launch_for_the_first_job_and_hand_off_for_the_next(monkeypatch):
    clock = iter([100.0, 250.0])
    monkeypatch.setattr(feedback.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr("ablate.machine.hardware.process_age_s", lambda: 7.5)
    monkeypatch.setattr(feedback, "_jobs_marked", 0)
    feedback.mark_job_start()
    assert feedback.take_job_start() == 92.5  # launched 7.5 s before the first job was handed over
    feedback.mark_job_start()
    assert feedback.take_job_start() == 250.0  # a later job of the same process: its own start
    monkeypatch.setattr(feedback.time, "monotonic", lambda: 300.0)
    assert feedback.take_job_start() == 300.0  # read once: a direct train() call starts when called


def test_the_progress_bar_shows_each_jobs_last_validation_loss(both_orders):  # noqa: F811
    for sweep, result in both_orders.values():
        for summary in summaries(sweep):
            assert f"val={summary['final_val_loss']:.3f}" in result.stderr


def test_the_postfix_adds_the_validation_loss_once_there_is_one():
    assert feedback.progress_postfix(3.14159, None, 1e-3, 1234.5) == {"loss": "3.142", "lr": "1.00e-03",
                                                                     "tok_s": "1234"}
    assert feedback.progress_postfix(3.0, 2.71828, 1e-3, 10)["val"] == "2.718"


def test_samples_txt_records_the_settings_that_draw_the_sample_again(both_orders):  # noqa: F811
    sweep = both_orders["m_between"][0]
    for job, summary in zip((0, 1), summaries(sweep)):
        settings, text = feedback.read_samples(sweep / str(job) / "samples.txt")
        assert settings == {"prompt": "To be", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 5,
                            "seed": 0, "step": 2}
        assert text == summary["sample"]
        model, cfg, tokenizer = load_run(sweep / str(job))  # the checkpoint of the last step
        prompt = torch.tensor([tokenizer.encode(settings["prompt"])])
        generator = torch.Generator().manual_seed(settings["seed"])
        with torch.no_grad():
            ids = model.generate(prompt, settings["max_new_tokens"], settings["temperature"], settings["top_p"],
                                 generator)
        assert tokenizer.decode(ids[0].tolist()) == text


def test_samples_txt_keeps_a_whitespace_prompt_visible(tmp_path):
    cfg = compose(*TINY, "train.max_steps=2", "train.eval_interval=2")
    summary = train(cfg, tmp_path / "run", progress=False)
    raw = (tmp_path / "run" / "samples.txt").read_text()
    assert raw.startswith('prompt: "\\n"\ntemperature: 0.8\ntop_p: 0.95\nmax_new_tokens: 20\nseed: 0\nstep: 2\n\n')
    assert feedback.read_samples(tmp_path / "run" / "samples.txt") == (
        {"prompt": "\n", "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 20, "seed": 0, "step": 2},
        summary["sample"])
