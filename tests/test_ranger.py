"""Ranger (RAdam + Lookahead + gradient centralization): convergence, exact resume,
the first-step and lookahead arithmetic, and agreement with the reference update rule."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from trainer.encoder.ranger import Ranger, radam_step_size


class _Net(nn.Module):
    """Conv (4-D weight), linear (2-D) and biases (1-D): every centralization case."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``i`` of a fixed regression task, independent of how many were drawn before."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(8, 2, 6, 6, generator=g)
    target = torch.stack([x.mean((1, 2, 3)), x[:, 0].amax((1, 2)), x[:, 1, 2, 3]], dim=1)
    return x, target


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for i in steps:
        x, target = _batch(i)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_params_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_loss_decreases():
    model = _Net()
    losses = _train(model, Ranger(model.parameters(), lr=2e-2), range(120))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)


def _resumed(init: nn.Module, n: int, split: int, through_bytes: bool) -> tuple[nn.Module, Ranger]:
    model = copy.deepcopy(init)
    opt = Ranger(model.parameters(), lr=3e-2, weight_decay=1e-3)
    _train(model, opt, range(split))
    saved = {"model": copy.deepcopy(model.state_dict()), "opt": opt.state_dict()}
    if through_bytes:
        buf = io.BytesIO()
        torch.save(saved, buf)
        buf.seek(0)
        saved = torch.load(buf)  # weights_only: the state must be plain tensors and numbers
    else:
        saved = copy.deepcopy(saved)
    del model, opt
    fresh = copy.deepcopy(init)
    fresh.load_state_dict(saved["model"])
    fresh_opt = Ranger(fresh.parameters(), lr=3e-2, weight_decay=1e-3)
    fresh_opt.load_state_dict(saved["opt"])
    _train(fresh, fresh_opt, range(split, n))
    return fresh, fresh_opt


@pytest.mark.parametrize("split", [1, 5, 6, 9, 13])  # around the rectification (6) and lookahead (k=6) steps
@pytest.mark.parametrize("through_bytes", [False, True])
def test_resume_through_state_dict_is_bitwise(split: int, through_bytes: bool):
    init, n = _Net(), 20
    straight = copy.deepcopy(init)
    straight_opt = Ranger(straight.parameters(), lr=3e-2, weight_decay=1e-3)
    _train(straight, straight_opt, range(n))

    resumed, resumed_opt = _resumed(init, n, split, through_bytes)
    _assert_params_equal(straight, resumed)
    for pa, pb in zip(straight.parameters(), resumed.parameters()):
        sa, sb = straight_opt.state[pa], resumed_opt.state[pb]
        assert sa.keys() == sb.keys() == {"step", "exp_avg", "exp_avg_sq", "slow_buffer"}
        assert sa["step"] == sb["step"] == n
        assert all(torch.equal(sa[key], sb[key]) for key in ("exp_avg", "exp_avg_sq", "slow_buffer"))


def test_resume_without_optimizer_state_differs():
    """The resume test can fail: dropping the optimizer state changes the trajectory."""
    init, n, split = _Net(), 20, 9
    straight = copy.deepcopy(init)
    _train(straight, Ranger(straight.parameters(), lr=3e-2), range(n))
    part = copy.deepcopy(init)
    _train(part, Ranger(part.parameters(), lr=3e-2), range(split))
    _train(part, Ranger(part.parameters(), lr=3e-2), range(split, n))
    assert not all(torch.equal(a, b) for a, b in zip(straight.parameters(), part.parameters()))


def test_first_step_is_momentum_form_with_centralized_gradient():
    w0, b0, c0 = torch.randn(3, 4), torch.randn(3), torch.randn(2, 3, 2, 2)
    gw, gb, gc = torch.randn(3, 4), torch.randn(3), torch.randn(2, 3, 2, 2)
    lr, beta1 = 0.1, 0.95

    def first_step(**kw) -> list[torch.Tensor]:
        params = [nn.Parameter(t.clone()) for t in (w0, b0, c0)]
        for p, g in zip(params, (gw, gb, gc)):
            p.grad = g.clone()
        Ranger(params, lr=lr, k=1000, **kw).step()  # k large: no lookahead sync on step 1
        for p, g in zip(params, (gw, gb, gc)):
            assert torch.equal(p.grad, g)  # the caller's gradient is not centralized in place
        return [p.detach() for p in params]

    def by_hand(p0: torch.Tensor, g: torch.Tensor, centred: bool) -> torch.Tensor:
        # Step 1: N_sma = 1 < 5, so p -= lr / (1 - beta1^1) * exp_avg with exp_avg = (1 - beta1) g.
        g = g.double()
        if centred:
            g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
        return (p0.double() - lr / (1 - beta1) * ((1 - beta1) * g)).float()

    w1, b1, c1 = first_step()
    torch.testing.assert_close(w1, by_hand(w0, gw, True), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b1, by_hand(b0, gb, False), rtol=1e-6, atol=1e-7)  # 1-D: untouched
    torch.testing.assert_close(c1, by_hand(c0, gc, True), rtol=1e-6, atol=1e-7)
    # Centralized: each output row of the update sums to zero.
    assert (w1 - w0).sum(1).abs().max() < 1e-5 and (c1 - c0).sum((1, 2, 3)).abs().max() < 1e-5
    assert (w1 - w0).sum(1).abs().max() < 1e-3 * (by_hand(w0, gw, False) - w0).sum(1).abs().max()

    w1, b1, c1 = first_step(use_gc=False)
    torch.testing.assert_close(w1, by_hand(w0, gw, False), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c1, by_hand(c0, gc, False), rtol=1e-6, atol=1e-7)

    w1, b1, c1 = first_step(gc_conv_only=True)
    torch.testing.assert_close(w1, by_hand(w0, gw, False), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c1, by_hand(c0, gc, True), rtol=1e-6, atol=1e-7)


def test_step_size_schedule():
    beta1, beta2 = 0.95, 0.999
    n_sma_max = 2 / (1 - beta2) - 1
    for t in range(1, 40):
        n_sma = n_sma_max - 2 * t * beta2**t / (1 - beta2**t)
        size, rectified = radam_step_size(t, (beta1, beta2), 5)
        assert rectified == (t >= 6) == (n_sma > 5)
        if rectified:
            r = math.sqrt((n_sma - 4) * (n_sma - 2) * n_sma_max / ((n_sma_max - 4) * (n_sma_max - 2) * n_sma))
            want = r * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        else:
            want = 1 / (1 - beta1**t)
        assert size == pytest.approx(want, rel=1e-12)


def test_lookahead_interpolates_towards_shadow_without_lookahead():
    """Each cycle, a shadow copy with alpha=1 (no lookahead effect) follows the same fast
    trajectory; at the k-th step the real optimizer must land on slow + alpha * (fast - slow)."""
    k, alpha = 4, 0.5
    model = _Net()
    opt = Ranger(model.parameters(), lr=5e-2, alpha=alpha, k=k)
    step = 0
    for _cycle in range(3):
        slow = [p.detach().clone() for p in model.parameters()]
        for p, s in zip(model.parameters(), slow):
            if opt.state[p]:
                assert torch.equal(opt.state[p]["slow_buffer"], s)
        shadow = copy.deepcopy(model)
        shadow_opt = Ranger(shadow.parameters(), lr=5e-2, alpha=alpha, k=k)
        # load_state_dict copies shallowly: without the deepcopy both would share moment tensors.
        shadow_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        shadow_opt.param_groups[0]["alpha"] = 1.0
        for i in range(1, k + 1):
            _train(model, opt, range(step, step + 1))
            _train(shadow, shadow_opt, range(step, step + 1))
            step += 1
            if i < k:  # no lookahead between syncs: bitwise the same fast weights
                _assert_params_equal(model, shadow)
        gap = 0.0
        for p, fast, s in zip(model.parameters(), shadow.parameters(), slow):
            torch.testing.assert_close(p.detach(), s + alpha * (fast.detach() - s), rtol=1e-6, atol=1e-7)
            assert torch.equal(opt.state[p]["slow_buffer"], p.detach())
            gap = max(gap, (p - fast).abs().max().item())
        assert gap > 1e-3  # lookahead moved the weights well beyond the tolerance


class _ReferenceRanger:
    """The reference step rule written out literally (10-entry step-size memo included),
    for whole-trajectory comparison."""

    def __init__(self, params: list[nn.Parameter], lr: float, weight_decay: float):
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.alpha, self.k, self.threshold, self.betas, self.eps = 0.5, 6, 5, (0.95, 0.999), 1e-5
        self.radam_buffer = [[None, None, None] for _ in range(10)]
        self.state: dict[nn.Parameter, dict] = {}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            grad = p.grad.clone()
            st = self.state.setdefault(p, {})
            if not st:
                st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                          slow_buffer=p.detach().clone())
            if grad.dim() > 1:
                grad.add_(-grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
            st["step"] += 1
            st["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            st["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
            buffered = self.radam_buffer[int(st["step"] % 10)]
            if st["step"] == buffered[0]:
                n_sma, step_size = buffered[1], buffered[2]
            else:
                buffered[0] = st["step"]
                beta2_t = beta2 ** st["step"]
                n_sma_max = 2 / (1 - beta2) - 1
                n_sma = n_sma_max - 2 * st["step"] * beta2_t / (1 - beta2_t)
                buffered[1] = n_sma
                if n_sma > self.threshold:
                    step_size = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
                                          * n_sma_max / (n_sma_max - 2)) / (1 - beta1 ** st["step"])
                else:
                    step_size = 1.0 / (1 - beta1 ** st["step"])
                buffered[2] = step_size
            if self.wd != 0:
                p.add_(p, alpha=-self.wd * self.lr)
            if n_sma > self.threshold:
                denom = st["exp_avg_sq"].sqrt().add_(self.eps)
                p.addcdiv_(st["exp_avg"], denom, value=-step_size * self.lr)
            else:
                p.add_(st["exp_avg"], alpha=-step_size * self.lr)
            if st["step"] % self.k == 0:
                slow = st["slow_buffer"]
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_trajectory_matches_reference_rule_bitwise(weight_decay: float):
    init = _Net()
    ours, ref = copy.deepcopy(init), copy.deepcopy(init)
    _train(ours, Ranger(ours.parameters(), lr=3e-2, weight_decay=weight_decay), range(25))
    _train(ref, _ReferenceRanger(list(ref.parameters()), lr=3e-2, weight_decay=weight_decay), range(25))
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
    assert not any(torch.equal(a, b) for a, b in zip(ours.parameters(), init.parameters()))  # both moved


def test_half_precision_parameters_update_through_float32_state():
    p = nn.Parameter(torch.randn(4, 3).half())
    opt = Ranger([p], lr=1e-2, k=2)
    for _ in range(4):
        p.grad = torch.randn(4, 3).half()
        opt.step()
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.float32 and st["slow_buffer"].dtype == torch.float16
    assert p.dtype == torch.float16 and torch.isfinite(p).all()


def test_rejects_bad_hyperparameters():
    params = [nn.Parameter(torch.zeros(2))]
    for kw in ({"alpha": 1.5}, {"k": 0}, {"lr": 0.0}, {"eps": 0.0}, {"betas": (0.95, 1.0)}):
        with pytest.raises(ValueError):
            Ranger(params, **kw)
