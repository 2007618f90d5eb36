"""--selection noise_rate: the noise-rate estimator (training/noise_rate.py), the (1 - ε̂) selection, and the
engine with the option on (resume) and off (unchanged)."""

import io
import math
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import instanceGM
from models.preact_resnet import preact_resnet18
from training import launch
from training import noise_rate as nr
from training.config import Config, ConfigError
from training.metrics import read_jsonl


# ---------------------------------------------------------------- the model, by hand ----------------------
def test_posterior_and_rate_match_hand_computation():
    # One sample, K = 3, noisy label 0, p(y|x) = (0.5, 0.3, 0.2), ε = 0.2 and a flip model of zero logits
    # (uniform over the two other classes): p(ŷ=0 | y) = 0.8 for y = 0 and 0.2 * 0.5 = 0.1 for y = 1, 2.
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    flip = nr.FlipModel(feature_dim=2, num_classes=3)
    torch.nn.init.zeros_(flip.out.weight)
    torch.nn.init.zeros_(flip.out.bias)
    log_f = flip(torch.zeros(1, 2))
    assert torch.allclose(log_f.exp(), torch.tensor([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]))
    noisy = torch.tensor([0])
    joint = torch.tensor([0.5 * 0.8, 0.3 * 0.1, 0.2 * 0.1])
    q = nr.posterior(log_p, log_f, noisy, 0.2)
    assert torch.allclose(q, (joint / joint.sum()).view(1, 3), atol=1e-6)
    assert nr.rate_from_posterior(q, noisy) == pytest.approx(float(1 - joint[0] / joint.sum()), abs=1e-6)
    # f's M-step loss: only y ≠ ŷ terms, weighted by q: -(q1 + q2) log 0.5
    assert nr.flip_loss(log_f, q, noisy).detach().item() == pytest.approx(
        float((q[0, 1] + q[0, 2]).detach() * math.log(2)), abs=1e-6
    )


def _synthetic(n: int, rate: float, seed: int, k: int = 10, d: int = 16):
    """Gaussian classes x ~ N(mu_y, I) with the exact Bayes posterior as the classifier, and labels flipped with
    probability ``rate`` to the class an instance-dependent random projection of x prefers (never y)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, d, generator=g)
    y = torch.randint(k, (n,), generator=g)
    x = mu[y] + torch.randn(n, d, generator=g)
    logits = x @ mu.T - 0.5 * (mu**2).sum(1)  # log p(y|x) up to a constant (uniform class prior)
    preference = x @ torch.randn(d, k, generator=g)
    preference[torch.arange(n), y] = -math.inf
    flipped = torch.rand(n, generator=g) < rate
    noisy = torch.where(flipped, preference.argmax(1), y)
    return x, logits, noisy, float((noisy != y).float().mean())


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_estimator_recovers_a_known_noise_rate(rate):
    x, logits, noisy, realised = _synthetic(2000, rate, seed=7)
    est = nr.NoiseRateEstimator(num_classes=10, seed=0)
    for _ in range(2):  # two epochs' fits, warm-started as in training
        estimate = est.fit(x, logits, noisy)
    # The classifier is the true posterior, so what is left is EM's convergence and the finite sample: ε̂ lands
    # within 0.001 of the realised rate at N = 3000 over rates 0.2-0.5 (same generator); 0.02 is about two
    # standard errors of the realised rate itself (sqrt(0.4 * 0.6 / 2000) = 0.011), far below the gap between
    # the two rates tested and the 0.5 the estimator starts from.
    assert abs(estimate - realised) < 0.02, (estimate, realised)


def test_estimator_state_round_trip_continues_identically():
    x, logits, noisy, _ = _synthetic(300, 0.3, seed=1)
    a = nr.NoiseRateEstimator(num_classes=10, seed=5)
    a.fit(x, logits, noisy, rounds=2)
    b = nr.NoiseRateEstimator(num_classes=10, seed=99)  # another seed: everything must come from the state
    buffer = io.BytesIO()  # through a file, as in a checkpoint (which is read back with weights_only=True)
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert a.fit(x, logits, noisy, rounds=2) == b.fit(x, logits, noisy, rounds=2)
    assert all(torch.equal(p, q) for p, q in zip(a.flip.parameters(), b.flip.parameters()))


def test_estimator_leaves_the_global_rng_alone():
    x, logits, noisy, _ = _synthetic(200, 0.3, seed=2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    nr.NoiseRateEstimator(num_classes=10, seed=0).fit(x, logits, noisy, rounds=1)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- selection --------------------------------
@pytest.mark.parametrize(
    ("n", "rate", "expected"), [(10, 0.3, 7), (10, 0.7, 3), (7, 0.5, 3), (600, 0.4013, 359), (5, 0.0, 5), (5, 0.99, 0)]
)
def test_selection_picks_floor_of_one_minus_rate_lowest_scores(n, rate, expected):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    mask = nr.select_by_rate(scores, rate)
    assert int(mask.sum()) == expected == math.floor((1 - rate) * n)
    if 0 < expected < n:  # every selected score is below every unselected one
        assert scores[mask].max() < scores[~mask].min()


def test_selection_breaks_ties_by_position():
    mask = nr.select_by_rate(torch.tensor([0.5, 0.1, 0.5, 0.5, 0.9]), 0.4)  # keep 3: 0.1 and the first two 0.5
    assert mask.tolist() == [True, True, True, False, False]


def test_selection_quality():
    selected = torch.tensor([True, True, False, False])
    q = nr.selection_quality(selected, torch.tensor([True, False, True, False]))
    assert q == {"selected_precision": 0.5, "selected_recall": 0.5}


def test_head_capture_records_penultimate_features_and_logits():
    net = preact_resnet18(num_classes=10, width=4).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad(), nr.HeadCapture(net) as head:
        logits = net(x)
    rows = head.rows()
    assert rows.shape == (5, 8 * 4 + 10)
    assert torch.allclose(rows[:, -10:], logits)
    assert torch.allclose(net.linear(rows[:, :-10]), logits, atol=1e-6)
    net(x)  # the hook is gone after the block
    assert len(head.logits) == 1
    with nr.HeadCapture(net, enabled=False) as off:
        net(x)
    assert off.logits == []


# ---------------------------------------------------------------- the engine -------------------------------
def _argv(tmp_path, *extra):
    return [
        "--dataset", "fashionmnist", "--r", "0.4", "--train_subset", "200", "--balanced_subset",
        "--test_subset", "500", "--width", "4", "--batch_size", "16", "--lr", "0.05",
        "--num_epochs", "3", "--warm_up", "1", "--seed", "3", "--device", "cpu",
        "--output_dir", str(tmp_path / "runs"), "--noise_dir", str(tmp_path / "noise"), "--log_interval", "5",
        *extra,
    ]  # fmt: skip


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@needs_fmnist
@pytest.mark.slow
def test_default_selection_is_the_original_divide(tmp_path, monkeypatch):
    # The gmm path must not touch the estimator at all (no extra random draws, hooks or state) ...
    def forbidden(*_args, **_kwargs):
        raise AssertionError("--selection gmm used the noise-rate estimator")

    monkeypatch.setattr(launch, "NoiseRateEstimator", forbidden)
    monkeypatch.setattr(nr, "select_by_rate", forbidden)
    summary = instanceGM.main(_argv(tmp_path, "--method", "dividemix", "--run_name", "gmm", "--selection", "gmm"))
    run_dir = Path(summary["run_dir"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert not any(k.startswith("noise/") or "selected_" in k for r in rows for k in r)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert "noise_rate" not in state["peers"]["net1"]
    # ... and the labeled set is the original's: every sample whose GMM clean probability exceeds p_threshold.
    splits = torch.load(run_dir / "splits.pt", weights_only=True)
    assert splits["epoch"] == rows[-1]["epoch"] == 2
    for net in ("net1", "net2"):
        assert rows[-1][f"split/{net}/labeled"] == int((splits["peers"][net]["prob"] > 0.5).sum()) > 0


@needs_fmnist
@pytest.mark.slow
def test_noise_rate_selection_runs_logs_and_resumes_exactly(tmp_path, interrupt_train_epoch):
    option = ("--method", "dividemix", "--selection", "noise_rate")
    full = instanceGM.main(_argv(tmp_path, "--run_name", "full", *option))
    expected = read_jsonl(Path(full["run_dir"]) / "metrics.jsonl")
    for r in expected[1:]:  # co-training epochs: ε̂ next to the realised rate, labeled = ⌊(1 - ε̂) N⌋
        assert 0.0 < r["noise/estimated_rate"] < 1.0 and 0.3 < r["noise/realised_rate"] < 0.5
        for net in ("net1", "net2"):
            assert r[f"split/{net}/labeled"] == math.floor((1 - r[f"noise/{net}/estimated_rate"]) * 200)
            assert 0.0 <= r[f"split/{net}/selected_precision"] <= 1.0
        assert r["noise/estimated_rate"] == pytest.approx(
            (r["noise/net1/estimated_rate"] + r["noise/net2/estimated_rate"]) / 2
        )

    interrupt_train_epoch.interrupt(4)  # epochs 1 and 2 train two peers each: this is epoch 2, net2
    with pytest.raises(SystemExit):
        instanceGM.main(_argv(tmp_path, "--run_name", "killed", *option))
    killed = tmp_path / "runs" / "killed"
    state = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["peers"]["net1"]["noise_rate"]["flip"] is not None
    interrupt_train_epoch.restore()
    instanceGM.main(_argv(tmp_path, "--run_name", "killed", "--resume", "auto", *option))
    assert _comparable(read_jsonl(killed / "metrics.jsonl")) == _comparable(expected)


def test_noise_rate_selection_needs_a_dividing_method():
    with pytest.raises(ConfigError, match="--method instancegm or dividemix"):
        Config(method="ce", selection="noise_rate").validate()
    with pytest.raises(ConfigError, match="--selection 'loss'"):
        Config(selection="loss").validate()
    assert Config().selection == "gmm"
