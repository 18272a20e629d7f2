"""lexiray.cost: what a trial pays an hour, its cost so far and projected (ThroughputMeter),
the budget's accounting (BudgetLedger), the config's and `--budget`'s errors, the `$` columns
left out without a price, `lexiray plan`'s projected cost, and the quality/cost panel."""

from __future__ import annotations

import struct

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from lexiray import plots
from lexiray.cli import tune_overrides
from lexiray.config import load_config, parse_usd
from lexiray.cost import BudgetLedger, hourly_rate, money, usd
from lexiray.errors import ConfigError
from lexiray.hf_trainer import ThroughputMeter
from lexiray.memory import model_shape, projected_cost_usd, projected_wall_s
from lexiray.report import cost_line, run_cost
from lexiray.results import REPORT, TERMINAL, LeaderboardRow, TrialReport, table


def _resources(**values):
    return load_config("smoke", [f"resources.{key}={value}" for key, value in values.items()]).resources


# --------------------------------------------------------------------------- the price


def test_a_gpu_trial_pays_every_gpu_it_holds_and_a_cpu_trial_every_worker():
    assert hourly_rate(_resources()) is None  # no price: no cost anywhere
    assert hourly_rate(_resources(price_per_hour=0.526, gpus_per_trial=1)) == pytest.approx(0.526)
    assert hourly_rate(_resources(price_per_hour=0.526, gpus_per_trial=1, num_workers=2)) == pytest.approx(1.052)
    assert hourly_rate(_resources(price_per_hour=0.5, gpus_per_trial=0.5)) == pytest.approx(0.25)  # half a GPU
    # CPU trials: per worker-hour, whatever cpus_per_trial they hold
    assert hourly_rate(_resources(price_per_hour=0.2, cpus_per_trial=4)) == pytest.approx(0.2)
    assert hourly_rate(_resources(price_per_hour=0.2, num_workers=3)) == pytest.approx(0.6)
    assert usd(1800, 0.526) == pytest.approx(0.263)
    assert money(0.01234) == "$0.0123" and money(12.5) == "$12.50" and money(None) == "-"


def _step(meter, state, args, clock, wall, steps, seconds):
    control = TrainerControl()
    for _ in range(steps):
        meter.on_step_begin(args, state, control)
        clock.now += seconds
        wall.now += seconds
        state.global_step += 1
        meter.on_step_end(args, state, control)


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def test_the_cost_so_far_counts_from_the_attempt_start_plus_earlier_attempts(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, report_to=[])
    clock, wall = Clock(), Clock(1000.0)
    # $3.60 an hour = $0.001 a second; an earlier attempt was paid for 50 s
    meter = ThroughputMeter(started_at=990.0, clock=clock, wall_clock=wall, hourly_usd=3.6, paid_before_s=50.0)
    state = TrainerState(max_steps=10)
    meter.on_train_begin(args, state, TrainerControl())
    _step(meter, state, args, clock, wall, steps=4, seconds=1.0)
    report = meter.report(args, state)
    # 50 s before + 10 s of start-up + 4 s of steps
    assert report.paid_s == pytest.approx(64.0)
    assert report.cost_usd == pytest.approx(0.064)
    # 6 steps left at 1 step/s: the full run 6 s more than so far
    assert report.projected_cost_usd == pytest.approx(0.070)
    assert report.projected_wall_s == pytest.approx(10.0)
    # without a price: no cost keys at all
    unpriced = ThroughputMeter(started_at=990.0, clock=clock, wall_clock=wall)
    unpriced.on_train_begin(args, state, TrainerControl())
    assert "cost_usd" not in unpriced.metrics(args, state) and "paid_s" not in unpriced.metrics(args, state)


# --------------------------------------------------------------------------- the budget


def test_the_ledger_counts_spent_and_committed_and_waits_while_trials_run():
    ledger = BudgetLedger(1.0, planned=6)
    assert ledger.may_start()  # nothing known: the first trials start on no estimate
    ledger.start("a")
    ledger.start("b")
    assert ledger.committed() == 0.0 and ledger.may_start()
    ledger.record("a", {"cost_usd": 0.1, "projected_cost_usd": 0.4})
    # b has no report yet: committed at the mean projected cost of a full trial
    assert ledger.estimate() == pytest.approx(0.4)
    assert ledger.spent() == pytest.approx(0.1)
    assert ledger.committed() == pytest.approx(0.3 + 0.4)
    assert ledger.may_start()  # 0.8 < 1.0
    ledger.record("b", {"cost_usd": 0.2, "projected_cost_usd": 0.6})
    assert ledger.spent() + ledger.committed() == pytest.approx(1.0)
    assert not ledger.may_start() and not ledger.final  # reached, but a and b run: wait
    assert ledger.at_stop == pytest.approx((0.3, 0.7))
    ledger.finish("a", {"cost_usd": 0.15, "projected_cost_usd": 0.15})  # ASHA stopped it early
    assert ledger.spent() + ledger.committed() == pytest.approx(0.15 + 0.6)
    assert ledger.may_start()  # its end freed committed cost
    ledger.start("c")
    assert ledger.at_stop is None  # it started one after all
    ledger.finish("b", {"cost_usd": 0.6})
    ledger.record("c", {"cost_usd": 0.3, "projected_cost_usd": 0.3})
    ledger.finish("c")
    assert ledger.spent() == pytest.approx(1.05)
    assert not ledger.may_start() and ledger.final and ledger.stopped  # none runs: final, 3 of 6 started
    assert not ledger.may_start()  # and stays so
    outcome = ledger.outcome()
    assert outcome["stopped_new_trials"] and outcome["trials_started"] == 3 and outcome["trials_planned"] == 6
    assert outcome["spent_at_stop_usd"] == pytest.approx(1.05) and outcome["committed_at_stop_usd"] == 0.0


def test_a_cost_never_goes_back_and_a_report_without_one_changes_nothing():
    ledger = BudgetLedger(1.0)
    ledger.start("a")
    ledger.record("a", {"cost_usd": 0.3, "projected_cost_usd": 0.5})
    ledger.record("a", {"cost_usd": 0.1})  # a retry's first report, resumed from an older checkpoint
    ledger.record("a", {"eval_loss": 2.0, "cost_usd": float("nan")})  # e.g. a diverged trial's last report
    assert ledger.spent() == pytest.approx(0.3) and ledger.projected["a"] == pytest.approx(0.5)


def test_a_budget_reached_with_every_trial_started_is_no_stop():
    ledger = BudgetLedger(0.5, planned=1)
    ledger.start("a")
    ledger.finish("a", {"cost_usd": 0.6})
    assert not ledger.may_start() and ledger.final and not ledger.stopped


# --------------------------------------------------------------------------- bad input


def test_budget_without_a_price_is_refused_on_one_line():
    with pytest.raises(ConfigError) as caught:
        load_config("smoke", tune_overrides([], budget="5"))
    message = str(caught.value)
    assert "\n" not in message and "tune.budget_usd (--budget) needs resources.price_per_hour" in message
    config = load_config("smoke", tune_overrides(["resources.price_per_hour=0.526"], budget="$5"))
    assert config.tune.budget_usd == 5.0


@pytest.mark.parametrize("text", ["five", "0", "-3", "inf", ""])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(ConfigError, match=r"^--budget "):
        parse_usd(text)


@pytest.mark.parametrize("override", ["resources.price_per_hour=0", "resources.price_per_hour=-1",
                                      "tune.budget_usd=0"])
def test_a_price_or_budget_must_be_positive(override):
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config("smoke", ["resources.price_per_hour=1", override] if "budget" in override else [override])


# --------------------------------------------------------------------------- the views


def _row(trial_id, score, cost=None, projected=None, status="DONE", speed=10.0):
    last = TrialReport(samples_per_second=speed, peak_memory_mb=500.0, cost_usd=cost, projected_cost_usd=projected)
    return LeaderboardRow(trial_id, status, "eval_loss", score, 8, 8, score, last=last, best=TrialReport(eval_loss=score))


def test_the_dollar_columns_are_left_out_of_the_tables_without_a_price():
    for view in (TERMINAL, REPORT):
        priced = [label for label, _ in table(view, "eval_loss", [])]
        unpriced = [label for label, _ in table(view, "eval_loss", [], priced=False)]
        assert "$" in priced and "$" not in unpriced
    assert "proj. $" in [label for label, _ in table(REPORT, "eval_loss", [])]


def test_the_run_cost_and_its_line():
    config = load_config("smoke", ["resources.price_per_hour=0.36", "tune.num_samples=4"])
    rows = [_row("a", 1.0, 0.002, 0.002), _row("b", 2.0, 0.001, 0.004, status="STOPPED")]
    cost = run_cost(rows, config)
    # spent: both trials; the full run: 4 planned trials at the mean full trial (0.002, 0.004)
    assert cost["cost_usd"] == pytest.approx(0.003) and cost["projected_cost_usd"] == pytest.approx(0.012)
    budget = {"budget_usd": 0.0025, "stopped_new_trials": True, "trials_started": 2, "trials_planned": 4,
              "spent_at_stop_usd": 0.003, "committed_at_stop_usd": 0.0}
    line = cost_line({**cost, "budget": budget})
    assert line.startswith("cost: $0.0030 spent; the full run (every planned trial to the end) projected at $0.0120")
    assert "budget $0.0025 reached at $0.0030 spent + $0.0000 committed: stopped starting trials after 2 of 4" in line
    assert run_cost([_row("a", 1.0)], config)["cost_usd"] is None and cost_line({"cost_usd": None}) == ""


def _png_width(image: bytes) -> int:
    return struct.unpack(">I", image[16:20])[0]


def test_quality_speed_gains_a_quality_cost_panel_when_trials_have_a_cost():
    rows = [_row("a", 1.0, 0.002), _row("b", 2.0, 0.001, speed=20.0), _row("c", 3.0, 0.003)]
    priced = plots.quality_speed(rows, "eval_loss")
    unpriced = plots.quality_speed([_row("a", 1.0), _row("b", 2.0)], "eval_loss")
    assert _png_width(priced) > _png_width(unpriced) * 1.4  # three panels, not two
    # the cost front: a (best loss) and b (cheapest); c is dominated
    front = plots.pareto_front([(r.value("cost_usd"), r.score, r.trial_id) for r in rows], higher_x_is_better=False)
    assert [name for _, _, name in front] == ["b", "a"]


def test_plan_prices_a_configuration_with_a_projected_wall_time():
    config = load_config("balanced", ["resources.price_per_hour=0.526", "resources.accelerator_type=T4",
                                      "resources.gpus_per_trial=1", "search={}"])
    shape = model_shape(config.model.name, config.model.revision)
    wall = projected_wall_s(config, shape, train_rows=450)
    cost = projected_cost_usd(config, shape, train_rows=450)
    assert wall is not None and wall[0] < wall[1]
    assert cost == pytest.approx((wall[0] / 3600 * 0.526, wall[1] / 3600 * 0.526))
    unpriced = load_config("balanced", ["resources.accelerator_type=T4", "resources.gpus_per_trial=1"])
    assert projected_cost_usd(unpriced, shape, train_rows=450) is None


# --------------------------------------------------------------------------- the search algorithms


def test_a_budget_wraps_each_search_algorithm_and_keeps_its_samples():
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from lexiray.tune import BudgetedVariantGenerator, BudgetLimiter, budget_ledger, search_algorithm

    priced = ["resources.price_per_hour=0.36", "tune.budget_usd=1", "tune.num_samples=5", "search.lora.r={grid: [4, 8]}"]
    config = load_config("smoke", priced)
    ledger = budget_ledger(config)
    assert ledger.budget_usd == 1.0 and ledger.planned == 10  # 5 samples x 2 grid points
    random = search_algorithm(config, 2, ledger)
    assert isinstance(random, BudgetedVariantGenerator) and isinstance(random, BasicVariantGenerator)
    assert random.max_concurrent == 2 and random.ledger is ledger
    assert budget_ledger(load_config("smoke")) is None
    assert type(search_algorithm(load_config("smoke"), 2)) is BasicVariantGenerator  # no budget: as before
    optuna = search_algorithm(load_config("smoke", [*priced[:3], "tune.search_alg=optuna"]), 2, BudgetLedger(1.0))
    assert isinstance(optuna, BudgetLimiter) and isinstance(optuna.searcher, ConcurrencyLimiter)


def test_the_budget_limiter_waits_then_finishes_optunas_search():
    from ray.tune.search import Searcher

    from lexiray.space import build_param_space
    from lexiray.tune import search_algorithm

    config = load_config("smoke", ["resources.price_per_hour=0.36", "tune.budget_usd=1", "tune.search_alg=optuna"])
    ledger = BudgetLedger(1.0, planned=8)
    searcher = search_algorithm(config, 2, ledger)
    searcher.set_search_properties(config.tune.metric, config.tune.mode, build_param_space(config))
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert isinstance(first, dict) and isinstance(second, dict) and ledger.started == 2
    searcher.on_trial_result("t1", {"eval_loss": 3.0, "step": 6, "training_iteration": 1, "cost_usd": 0.3, "projected_cost_usd": 0.6})
    searcher.on_trial_result("t2", {"eval_loss": 3.1, "step": 6, "training_iteration": 1, "cost_usd": 0.3, "projected_cost_usd": 0.6})
    assert searcher.suggest("t3") is None  # spent 0.6 + committed 0.6: wait while both run
    searcher.on_trial_complete("t1", {"eval_loss": 2.0, "step": 36, "training_iteration": 6, "cost_usd": 0.6})
    assert searcher.suggest("t3") is None  # spent 0.9 + committed 0.3
    searcher.on_trial_complete("t2", {"eval_loss": 2.5, "step": 36, "training_iteration": 6, "cost_usd": 0.6})
    assert searcher.suggest("t3") == Searcher.FINISHED  # spent 1.2, nothing runs: the search ends
    assert ledger.stopped and ledger.started == 2


@pytest.mark.parametrize("args,message", [
    (["--budget", "5"], "tune.budget_usd (--budget) needs resources.price_per_hour"),
    (["--budget", "five", "--set", "resources.price_per_hour=1"], "--budget 'five': expected an amount in USD"),
])
def test_lexiray_tune_refuses_a_bad_budget_on_one_line_before_ray_starts(tmp_path, args, message):
    from tests.conftest import run_cli

    result = run_cli(["tune", "-c", "smoke", *args, "--storage-path", str(tmp_path / "results")], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "results").exists()


def test_the_budget_limiter_saves_its_ledger_with_the_searcher(tmp_path):
    from lexiray.space import build_param_space
    from lexiray.tune import search_algorithm

    config = load_config("smoke", ["resources.price_per_hour=0.36", "tune.budget_usd=1", "tune.search_alg=optuna"])
    searcher = search_algorithm(config, 2, BudgetLedger(1.0, planned=8))
    searcher.set_search_properties(config.tune.metric, config.tune.mode, build_param_space(config))
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"eval_loss": 2.0, "training_iteration": 1, "cost_usd": 0.4})
    # as Tune checkpoints and restores an experiment's search algorithm
    from ray.tune.search import SearchGenerator

    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s1")
    restored = search_algorithm(config, 2, BudgetLedger(1.0, planned=8))
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    assert restored.ledger.spent() == pytest.approx(0.4) and restored.ledger.started == 1


def test_a_retried_trial_is_paid_from_what_its_earlier_attempts_recorded(tmp_path):
    from lexiray.storage import ExperimentLayout, append_history
    from lexiray.trial import paid_before

    layout = ExperimentLayout(str(tmp_path / "experiment"))
    assert paid_before(layout, "t1") == 0.0  # a first attempt
    for result in ({"step": 4, "paid_s": 30.0}, {"step": 8, "paid_s": 42.5}, {"step": 4, "paid_s": 12.0},
                   {"step": 8, "diverged": "non-finite loss"}):  # a retry's first report, a report without one
        append_history(layout, "t1", result)
    assert paid_before(layout, "t1") == pytest.approx(42.5)
    assert paid_before(layout, "t2") == 0.0
