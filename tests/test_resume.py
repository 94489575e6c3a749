"""What a checkpoint carries beyond weights so that a resumed run equals the uninterrupted one."""

from torchmetrics import MaxMetric

from src.models.resume import BEST_KEY, restore_best, save_best


def test_the_best_score_so_far_goes_into_the_checkpoint_and_comes_back():
    metric, checkpoint = MaxMetric(), {}
    save_best(metric, checkpoint)
    assert BEST_KEY not in checkpoint  # no validation yet: nothing to carry
    metric(0.4)
    metric(0.7)
    metric(0.5)
    save_best(metric, checkpoint)
    resumed = MaxMetric()
    restore_best(resumed, checkpoint)
    resumed(0.6)  # a later, worse epoch does not replace the best of the run before the stop
    assert resumed.compute() == metric.compute()  # bit for bit: the float32 value goes through as it is
    fresh = MaxMetric()
    fresh(0.2)
    restore_best(fresh, {})  # a checkpoint without one: the metric starts empty
    assert fresh.update_count == 0
