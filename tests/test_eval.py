"""Evaluation gives the accuracy we can compute independently for hand-made heads and transforms."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mdamerge.errors import CheckpointError, ConfigError
from mdamerge.evaluation.evaluate import average, evaluate_backbone, evaluate_folder, normalized
from mdamerge.zoo.build import Zoo, ZooSettings
from mdamerge.zoo.model import TinyViT, ViTConfig

SMALL = ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64, projection_dim=16)
TASKS = ["mnist", "fashion"]


def write_head(zoo: Zoo, task: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    zoo.head_file(task).parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(zoo.head_file(task)))


@pytest.fixture
def zoo(tmp_path):
    return Zoo(tmp_path / "zoo", settings=ZooSettings(model=SMALL))


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return TinyViT(SMALL).eval()


def test_constant_heads_score_the_class_frequency(zoo, backbone):
    # A head with zero weights and a one-hot bias always predicts its class.
    for task, cls in zip(TASKS, (3, 7)):
        write_head(zoo, task, torch.zeros(10, 16), torch.nn.functional.one_hot(torch.tensor(cls), 10).float())
    acc = evaluate_backbone(backbone.state_dict(), zoo, TASKS)
    for task, cls in zip(TASKS, (3, 7)):
        y = zoo.task_data(task).test[1]
        assert acc[task] == pytest.approx(float((y == cls).float().mean()))
    val = evaluate_backbone(backbone.state_dict(), zoo, TASKS, split="val", limit=100)
    assert val["mnist"] == pytest.approx(float((zoo.task_data("mnist").val[1][:100] == 3).float().mean()))


def test_feature_transform_is_applied_before_the_head(zoo, backbone):
    weight = torch.zeros(10, 16)
    weight[torch.arange(10), torch.arange(10)] = 1.0  # class j reads feature j
    for task in TASKS:
        write_head(zoo, task, weight, torch.zeros(10))

    def always_class_5(features):
        out = torch.zeros_like(features)
        out[:, 5] = 1.0
        return out

    acc = evaluate_backbone(backbone.state_dict(), zoo, TASKS, feature_transforms={"fashion": always_class_5})
    y = zoo.task_data("fashion").test[1]
    assert acc["fashion"] == pytest.approx(float((y == 5).float().mean()))
    # mnist has no transform: the prediction is the argmax of the backbone's first 10 features
    x, y = zoo.task_data("mnist").test
    with torch.no_grad():
        expected = float((backbone(x)[:, :10].argmax(1) == y).float().mean())
    assert acc["mnist"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="feature transform given for task 'letters'"):
        evaluate_backbone(backbone.state_dict(), zoo, TASKS, feature_transforms={"letters": always_class_5})


def test_folder_evaluation_matches_state_dict_evaluation(zoo, backbone, tmp_path):
    for task in TASKS:
        gen = torch.Generator().manual_seed(1)
        write_head(zoo, task, torch.randn(10, 16, generator=gen), torch.zeros(10))
    folder = backbone.save_pretrained(tmp_path / "model")
    assert evaluate_folder(folder, zoo, TASKS, split="val") == evaluate_backbone(backbone.state_dict(), zoo, TASKS, "val")


def test_missing_head_and_bad_state_dict_are_reported(zoo, backbone):
    with pytest.raises(CheckpointError, match="no head for task 'mnist'"):
        evaluate_backbone(backbone.state_dict(), zoo, ["mnist"])
    state = dict(backbone.state_dict())
    state.pop("post_layernorm.bias")
    with pytest.raises(CheckpointError, match="missing 'post_layernorm.bias'"):
        evaluate_backbone(state, zoo, ["mnist"])


def test_average_and_normalized():
    acc = {"a": 0.5, "b": 0.9}
    ref = {"a": 1.0, "b": 0.9}
    assert average(acc) == pytest.approx(0.7)
    assert normalized(acc, ref) == pytest.approx({"a": 0.5, "b": 1.0})
