import pytest

from vjepa_adapt.train.schedules import ema_momentum, linear, warmup_cosine


def test_warmup_cosine_hand_values():
    kw = dict(total_steps=110, warmup_steps=10, base=1.0, final=0.1, start=0.0)
    assert warmup_cosine(0, **kw) == 0.0
    assert warmup_cosine(5, **kw) == pytest.approx(0.5)  # warmup midpoint
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)  # end of warmup = base
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)  # cosine midpoint = (base + final) / 2
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)  # holds after the end
    # a quarter into the decay: final + (base-final) * (1 + cos(pi/4)) / 2
    assert warmup_cosine(35, **kw) == pytest.approx(0.1 + 0.9 * (1 + 0.5**0.5) / 2)


def test_warmup_cosine_start_and_no_warmup():
    assert warmup_cosine(0, 100, 10, base=2.0, start=1.0) == pytest.approx(1.0)
    assert warmup_cosine(5, 100, 10, base=2.0, start=1.0) == pytest.approx(1.5)
    assert warmup_cosine(0, 100, 0, base=2.0) == pytest.approx(2.0)
    assert warmup_cosine(50, 100, 0, base=2.0) == pytest.approx(1.0)
    # warmup covering the whole run: base until the end, then final
    assert warmup_cosine(10, 10, 10, base=3.0, final=0.5) == 0.5
    with pytest.raises(ValueError):
        warmup_cosine(0, -1, 0, base=1.0)


def test_linear():
    assert linear(0, 10, 0.04, 0.4) == pytest.approx(0.04)
    assert linear(5, 10, 0.04, 0.4) == pytest.approx(0.22)
    assert linear(10, 10, 0.04, 0.4) == pytest.approx(0.4)
    assert linear(20, 10, 0.04, 0.4) == pytest.approx(0.4)
    assert linear(3, 0, 1.0, 2.0) == 2.0


def test_ema_momentum():
    assert ema_momentum(0, 100) == 0.99925
    assert ema_momentum(77, 100) == pytest.approx(0.99925)
    assert ema_momentum(50, 100, start=0.996, end=1.0) == pytest.approx(0.998)
    with pytest.raises(ValueError):
        ema_momentum(0, 10, start=1.5)
