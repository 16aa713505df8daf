"""What the SR of a study waits for (issue 11, latency): the first model's SR is published
before the next model runs, every model's SR before any SC or SEG is drawn, nothing slow
runs between a model's answer and its SR (the findings wait until the result is recorded),
and the results' first-use costs are paid when the worker starts, not by the first study."""

from __future__ import annotations

import time

from aenode.config import Config
from aenode.infer.worker import AnalysisWorker
from tests.inference.test_pipeline import FakeIndex, _rows


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self.warmed: list[str] = []

    def publish(self, study_uid, revision, model, outcome, volume, parts=("sr", "sc", "seg")) -> list[str]:
        # When the SR would be built: the findings must not have been computed yet.
        assert "findings" not in outcome.prediction.detail
        self.events.append(("publish " + "+".join(parts), outcome.model, time.perf_counter()))
        return [f"1.2.3.{len(self.events)}"]

    def warm_up(self, model) -> float:
        self.warmed.append(model.name)
        return 0.0


def test_first_sr_leaves_before_the_next_model_runs(heldout_studies, models, monkeypatch):
    study = next(s for s in heldout_studies if s[0] == "typical")[2]
    index = FakeIndex({"s": _rows(study)})
    publisher = RecordingPublisher()
    worker = AnalysisWorker(Config(), index, models, publisher)
    names = [m.name for m in models]
    for m in models:
        original = m.run

        def run(x, _original=original, _name=m.name):
            publisher.events.append(("run", _name, time.perf_counter()))
            return _original(x)

        monkeypatch.setattr(m, "run", run)
    assert worker.process("s", 1) == "analysed"
    kinds = [(kind, name) for kind, name, _ in publisher.events]
    assert kinds == [("run", names[0]), ("publish sr", names[0]), ("run", names[1]), ("publish sr", names[1]),
                     ("publish sc+seg", names[0]), ("publish sc+seg", names[1])]
    # Findings (surveillance) are computed when the result is recorded, after the publish;
    # each result row carries the UIDs of both passes.
    details = {r[1]: r[6] for r in index.results}
    assert details["covid-typicality"]["findings"]["laterality"] in ("bilateral", "unilateral")
    assert all(len(d["result_uids"]) == 2 for d in details.values())


def test_worker_warms_up_the_results_before_the_first_study(models):
    publisher = RecordingPublisher()
    worker = AnalysisWorker(Config(), FakeIndex({}), models, publisher)
    worker.warm_up()
    assert publisher.warmed == [next(iter(models)).name]


def test_outbox_publisher_warm_up_builds_an_sr_and_writes_nothing(models, tmp_path):
    from aenode.deliver.outbox import Outbox
    from aenode.deliver.publish import OutboxPublisher

    cfg = Config.model_validate({"node": {"data_dir": str(tmp_path / "data")}})
    outbox = Outbox.for_config(cfg)
    try:
        seconds = OutboxPublisher(cfg, outbox).warm_up(models.get("covid-typicality"))
        assert seconds > 0
        assert outbox.rows() == []
    finally:
        outbox.close()
    assert not (tmp_path / "data" / "results").exists()
