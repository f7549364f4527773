"""The multi-task model: shapes for every backbone, heads added to a trained model, a loss that goes down."""
import pytest
import torch

from nbmodule.models import build_model

TASKS = {"seg": 5, "depth": 1, "normals": 3, "edges": 1}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_every_backbone_predicts_full_resolution_maps(backbone):
    model = build_model("mtl", tasks=TASKS, backbone=backbone, head_width=8)
    assert model.encoder_weights == "random"
    out = model(torch.rand(2, 3, 40, 56))
    assert {k: tuple(v.shape) for k, v in out.items()} == {t: (2, c, 40, 56) for t, c in TASKS.items()}
    only = model(torch.rand(2, 3, 32, 32), tasks=["depth"])
    assert list(only) == ["depth"]


def test_add_task_keeps_the_trained_encoder_and_rejects_duplicates():
    model = build_model("mtl", tasks={"seg": 3}, backbone="mobilenet_v3_small", head_width=8)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = model.add_task("normals", 3)
    assert "normals" in model.tasks and model.spec()["tasks"] == {"seg": 3, "normals": 3}
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert sum(p.numel() for p in head.parameters()) > 0
    with pytest.raises(ValueError, match="already has a head"):
        model.add_task("seg", 3)
    rebuilt = build_model("mtl", **model.spec())
    rebuilt.load_state_dict(model.state_dict())  # the spec rebuilds the same architecture


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*resnet18"):
        build_model("mtl", tasks={"seg": 3}, backbone="vgg")


def test_training_a_head_reduces_its_loss():
    from nbmodule.losses import depth_l1_loss

    torch.manual_seed(0)
    model = build_model("mtl", tasks={"depth": 1}, backbone="mobilenet_v3_small", head_width=8)
    x = torch.rand(4, 3, 32, 32)
    y = 1.0 + x[:, :1]  # depth that the image determines
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = depth_l1_loss(model(x)["depth"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pretrained_weights_fall_back_to_random_offline_and_say_so(monkeypatch):
    """Offline, pretrained=True gives the encoder pretrained=False would have (same seed, same weights),
    and says which it got and why."""
    import urllib.error

    import torchvision

    from nbmodule.models import mtl

    real = torchvision.models.mobilenet_v3_small

    def offline(weights=None, **kw):
        if weights is not None:
            real(weights=None, **kw)  # consume the RNG as a real attempt would, then fail to download
            raise urllib.error.URLError("Name or service not known")
        return real(weights=None, **kw)

    monkeypatch.setattr(torchvision.models, "mobilenet_v3_small", offline)
    monkeypatch.setattr(mtl, "_UNAVAILABLE", {})
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="ImageNet weights of mobilenet_v3_small unavailable.*URLError"):
        a = build_model("mtl", tasks={"seg": 3}, backbone="mobilenet_v3_small", pretrained=True, head_width=8)
    torch.manual_seed(0)
    b = build_model("mtl", tasks={"seg": 3}, backbone="mobilenet_v3_small", pretrained=False, head_width=8)
    assert a.encoder_weights == "random" and "random weights" in a.encoder.weights_note
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    calls = []
    monkeypatch.setattr(torchvision.models, "mobilenet_v3_small", lambda **kw: calls.append(kw) or real(**kw))
    with pytest.warns(UserWarning, match="URLError"):  # the failure is remembered: no second download attempt
        build_model("mtl", tasks={"seg": 3}, backbone="mobilenet_v3_small", pretrained=True, head_width=8)
    assert calls == [{"weights": None}]
