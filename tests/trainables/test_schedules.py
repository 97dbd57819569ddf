"""Tests for trainables.schedules: hand-computed values, step rules, waveforms, validation."""

from __future__ import annotations

import dataclasses

import pytest

from lrbs.trainables.schedules import (
    ScheduleConfig,
    ratio_at,
    schedule_at,
    schedule_from_dict,
    validate_schedule,
)

CBS = ScheduleConfig(kind="cyclic_batch", low=128, high=640, cycle_epochs=8)
CLR = ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, cycle_epochs=8)


def test_constant():
    cfg = ScheduleConfig()
    for e in (0, 1, 57, 199):
        assert schedule_at(cfg, e, 0.1, 50) == (0.1, 50)
    validate_schedule(cfg, epochs=10, train_size=100)


def test_step_milestones_resnet56():
    # Paper Fig. 2 ResNet56: divide by 10 at epochs 60, 100, 140, 180 (0-based, MultiStepLR rule).
    cfg = ScheduleConfig(kind="step", milestones=(60, 100, 140, 180), factor=0.1)
    expect = {0: 0.1, 59: 0.1, 60: 0.01, 99: 0.01, 100: 0.001, 139: 0.001, 140: 1e-4, 180: 1e-5, 199: 1e-5}
    for e, lr in expect.items():
        got_lr, bs = schedule_at(cfg, e, 0.1, 128)
        assert got_lr == pytest.approx(lr, rel=1e-12)
        assert bs == 128
    validate_schedule(cfg, epochs=200, train_size=50_000)


def test_step_every_vgg11():
    # Paper Fig. 2 VGG11: halve every 25 epochs.
    cfg = ScheduleConfig(kind="step", every=25, factor=0.5)
    expect = {0: 0.1, 24: 0.1, 25: 0.05, 49: 0.05, 50: 0.025, 75: 0.0125, 199: 0.1 / 2**7}
    for e, lr in expect.items():
        assert schedule_at(cfg, e, 0.1, 50) == (pytest.approx(lr, rel=1e-12), 50)
    validate_schedule(cfg, epochs=200, train_size=50_000)


def test_cyclic_batch_triangle_by_hand():
    # 128 <-> 640, 8-epoch cycle: step of (640 - 128) / 4 = 128 per epoch.
    bss = [schedule_at(CBS, e, 0.005, 999)[1] for e in range(17)]
    assert bss == [128, 256, 384, 512, 640, 512, 384, 256] * 2 + [128]
    assert all(schedule_at(CBS, e, 0.005, 999)[0] == 0.005 for e in range(17))
    assert all(isinstance(schedule_at(CBS, e, 0.005, 999)[1], int) for e in range(17))


def test_cyclic_batch_rounds_half_up():
    cfg = ScheduleConfig(kind="cyclic_batch", low=1, high=2, cycle_epochs=4)  # 1, 1.5, 2, 1.5
    assert [schedule_at(cfg, e, 0.1, 9)[1] for e in range(4)] == [1, 2, 2, 2]


def test_cyclic_lr_triangle_by_hand():
    lrs = [schedule_at(CLR, e, 0.123, 128)[0] for e in range(9)]
    expect = [0.001, 0.002, 0.003, 0.004, 0.005, 0.004, 0.003, 0.002, 0.001]
    assert lrs == pytest.approx(expect, rel=1e-12)
    assert all(schedule_at(CLR, e, 0.123, 128)[1] == 128 for e in range(9))


def test_square_wave():
    cfg = ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, cycle_epochs=8, wave="square")
    lrs = [schedule_at(cfg, e, 0.1, 128)[0] for e in range(16)]
    assert lrs == ([0.001] * 4 + [0.005] * 4) * 2
    odd = dataclasses.replace(cfg, cycle_epochs=5)
    assert [schedule_at(odd, e, 0.1, 128)[0] for e in range(5)] == [0.001] * 3 + [0.005] * 2


@pytest.mark.parametrize("cycle", [2, 4, 6, 8, 10, 16])
def test_triangle_symmetry(cycle):
    cfg = ScheduleConfig(kind="cyclic_lr", low=1.0, high=3.0, cycle_epochs=cycle)
    half = cycle // 2
    vals = [schedule_at(cfg, e, 0.1, 1)[0] for e in range(3 * cycle)]
    assert vals[0] == 1.0 and vals[half] == 3.0
    for d in range(half + 1):
        assert vals[half - d] == vals[half + d]  # exact: integer phase arithmetic
    assert vals[:cycle] == vals[cycle : 2 * cycle] == vals[2 * cycle :]  # periodic
    assert min(vals) == 1.0 and max(vals) == 3.0


def test_triangle_odd_cycle_never_hits_high():
    cfg = ScheduleConfig(kind="cyclic_lr", low=1.0, high=6.0, cycle_epochs=5)
    vals = [schedule_at(cfg, e, 0.1, 1)[0] for e in range(5)]
    assert vals == pytest.approx([1.0, 3.0, 5.0, 5.0, 3.0])


def test_start_high_shifts_half_cycle():
    clr_high = dataclasses.replace(CLR, start="high")
    lrs = [schedule_at(clr_high, e, 0.1, 128)[0] for e in range(9)]
    assert lrs == pytest.approx([0.005, 0.004, 0.003, 0.002, 0.001, 0.002, 0.003, 0.004, 0.005], rel=1e-12)
    for e in range(16):  # for even cycles, start=high is start=low shifted by C/2
        assert schedule_at(clr_high, e, 0.1, 128)[0] == pytest.approx(schedule_at(CLR, e + 4, 0.1, 128)[0])
    sq = ScheduleConfig(kind="cyclic_batch", low=128, high=640, cycle_epochs=4, wave="square", start="high")
    assert [schedule_at(sq, e, 0.005, 1)[1] for e in range(8)] == [640, 640, 128, 128] * 2


def test_ratio_cbs_vs_clr():
    # The paper's pair, with CLR starting at high so both start at the largest eta/S = 0.005/128.
    clr = dataclasses.replace(CLR, start="high")
    for e in (0, 4, 8, 12):  # extremes agree: 0.005/128, then 0.005/640 == 0.001/128
        assert ratio_at(CBS, e, 0.005, 128) == pytest.approx(ratio_at(clr, e, 0.005, 128), rel=1e-12)
    assert ratio_at(CBS, 0, 0.005, 128) == pytest.approx(0.005 / 128)
    assert ratio_at(CBS, 4, 0.005, 128) == pytest.approx(0.005 / 640)
    # In between they differ (hyperbolic vs linear in t): 0.005/256 vs 0.004/128 a quarter-cycle in.
    assert ratio_at(CBS, 1, 0.005, 128) == pytest.approx(0.005 / 256)
    assert ratio_at(clr, 1, 0.005, 128) == pytest.approx(0.004 / 128)
    # Both starting at low puts them half a cycle out of phase in eta/S.
    assert ratio_at(CLR, 0, 0.005, 128) == pytest.approx(ratio_at(CBS, 4, 0.005, 128))
    assert ratio_at(ScheduleConfig(), 3, 0.1, 50) == pytest.approx(0.002)


def test_schedule_at_is_pure():
    before = dataclasses.asdict(CBS)
    assert [schedule_at(CBS, e, 0.005, 128) for e in range(10)] == [schedule_at(CBS, e, 0.005, 128) for e in range(10)]
    assert dataclasses.asdict(CBS) == before
    with pytest.raises(ValueError):
        schedule_at(CBS, -1, 0.005, 128)


def test_paper_configs_validate():
    validate_schedule(CBS, epochs=200, train_size=45_000)
    validate_schedule(CLR, epochs=200, train_size=45_000)


@pytest.mark.parametrize(
    "cfg,field",
    [
        (ScheduleConfig(kind="cosine"), "kind"),
        (ScheduleConfig(kind="step"), "milestones"),
        (ScheduleConfig(kind="step", milestones=(10, 10)), "milestones"),
        (ScheduleConfig(kind="step", milestones=(20, 10)), "milestones"),
        (ScheduleConfig(kind="step", milestones=(0, 10)), "milestones"),
        (ScheduleConfig(kind="step", milestones=(60, 100)), "milestones"),  # all after epochs=50
        (ScheduleConfig(kind="step", milestones=(10,), every=5), "every"),
        (ScheduleConfig(kind="step", every=0), "every"),
        (ScheduleConfig(kind="step", every=50), "every"),
        (ScheduleConfig(kind="step", every=True), "every"),
        (ScheduleConfig(kind="step", every=5, factor=0.0), "factor"),
        (ScheduleConfig(kind="step", every=5, factor=-0.5), "factor"),
        (ScheduleConfig(kind="cyclic_lr", high=0.005), "low"),
        (ScheduleConfig(kind="cyclic_lr", low=0.001), "high"),
        (ScheduleConfig(kind="cyclic_lr", low=0.005, high=0.001), "low"),
        (ScheduleConfig(kind="cyclic_lr", low=0.005, high=0.005), "low"),
        (ScheduleConfig(kind="cyclic_lr", low=0.0, high=0.005), "low"),
        (ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, cycle_epochs=1), "cycle_epochs"),
        (ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, wave="sine"), "wave"),
        (ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, start="middle"), "start"),
        (ScheduleConfig(kind="cyclic_lr", low=0.001, high=0.005, wave="square", cycle_epochs=200), "cycle_epochs"),
        (ScheduleConfig(kind="cyclic_batch", low=0, high=640), "low"),
        (ScheduleConfig(kind="cyclic_batch", low=128, high=1001), "high"),
        (ScheduleConfig(kind="cyclic_batch", low=128.5, high=640), "low"),
        (ScheduleConfig(kind="constant", milestones=(10,)), "milestones"),
        (ScheduleConfig(kind="constant", every=10), "every"),
        (ScheduleConfig(kind="step", every=10, low=0.1), "low"),
    ],
)
def test_validation_names_field(cfg, field):
    with pytest.raises(ValueError, match=rf"^schedule\.{field}: "):
        validate_schedule(cfg, epochs=50, train_size=1000)


def test_from_dict_roundtrip_and_lists():
    cfg = schedule_from_dict({"kind": "step", "milestones": [60, 100, 140, 180], "factor": 0.1})
    assert cfg.milestones == (60, 100, 140, 180)
    hash(cfg)  # frozen and hashable
    assert schedule_from_dict(dataclasses.asdict(CBS)) == CBS
    assert schedule_from_dict(None) == ScheduleConfig()
    assert schedule_from_dict({}) == ScheduleConfig()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"^schedule\.foo: unknown key"):
        schedule_from_dict({"kind": "constant", "foo": 1})
    with pytest.raises(ValueError, match=r"^schedule\.cycle: unknown key"):
        schedule_from_dict({"kind": "cyclic_lr", "cycle": 8})
    with pytest.raises(ValueError, match=r"^schedule: expected a mapping"):
        schedule_from_dict([("kind", "step")])
