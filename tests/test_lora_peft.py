"""LoRA merging with adapters made by peft itself on tiny transformers models.

The references are peft's own ``merge_and_unload`` (which applies each adapter to the
base with peft's scaling and orientation rules), so these tests check that mdamerge reads
adapters exactly as peft means them, and that the new adapter loads back into peft.
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft", reason="peft is not installed (extra: pip install 'mdamerge[hf]')")
transformers = pytest.importorskip("transformers")

from mdamerge.lora import merge_lora  # noqa: E402

NUM_ADAPTERS = 3
R = 4


def perturb_lora(model, seed: int) -> None:
    """Give the adapter non-zero, seeded factors (peft initialises lora_B to zero) and a trained head."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def llama(seed: int = 0):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def llama_adapters(tmp_path_factory):
    """A tiny LLaMA base and 3 peft LoRA adapters (q/v projections, the embedding, and a full lm_head)."""
    root = tmp_path_factory.mktemp("peft")
    base = llama()
    base.save_pretrained(root / "base")
    dirs, merged = [], []
    for t in range(NUM_ADAPTERS):
        config = peft.LoraConfig(r=R, lora_alpha=2 * R + t, target_modules=["q_proj", "v_proj", "embed_tokens"],
                                 modules_to_save=["lm_head"], use_rslora=(t == 2))
        model = peft.get_peft_model(llama(), config)
        perturb_lora(model, 100 + t)
        model.save_pretrained(root / f"adapter{t}")
        dirs.append(root / f"adapter{t}")
        merged.append(state(model.merge_and_unload()))  # peft's own application of the adapter
    return {"root": root, "base": state(base), "dirs": dirs, "merged": merged}


def test_task_arithmetic_equals_peft_applied_adapters(llama_adapters, tmp_path):
    merge_lora(llama_adapters["root"] / "base", llama_adapters["dirs"], tmp_path / "out", "task_arithmetic", progress=False)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    base = llama_adapters["base"]
    got = state(model)
    changed = 0
    for name, b in base.items():
        expected = b + 0.3 * sum(m[name] - b for m in llama_adapters["merged"])
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(expected, b)
    assert changed == 2 * 2 + 2  # q/v in both layers, the embedding and lm_head
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_new_adapter_loads_in_peft_and_reproduces_the_merged_model(llama_adapters, tmp_path):
    root = llama_adapters["root"]
    merge_lora(root / "base", llama_adapters["dirs"], tmp_path / "model", "tsv", progress=False)
    result = merge_lora(root / "base", llama_adapters["dirs"], tmp_path / "adapter", "tsv", output="adapter",
                        rank=NUM_ADAPTERS * R, progress=False)
    assert result.max_truncation_error < 1e-4  # TSV's merged delta has rank <= T r
    peft_model = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(root / "base"),
                                                tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = peft_model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
    applied = state(peft_model.merge_and_unload())
    expected = state(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model"))
    for name, tensor in expected.items():
        torch.testing.assert_close(applied[name], tensor, rtol=1e-4, atol=1e-5)


def test_gpt2_fan_in_fan_out_adapters(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
    base = state(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base"))
    dirs, merged = [], []
    for t in range(2):
        model = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base"),
                                    peft.LoraConfig(r=R, lora_alpha=R, target_modules=["c_attn"], fan_in_fan_out=True))
        perturb_lora(model, t)
        model.save_pretrained(tmp_path / f"a{t}")
        dirs.append(tmp_path / f"a{t}")
        merged.append(state(model.merge_and_unload()))
    merge_lora(tmp_path / "base", dirs, tmp_path / "out", "average", progress=False)
    got = state(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out"))
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"):
        torch.testing.assert_close(got[name], (merged[0][name] + merged[1][name]) / 2, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got[name], base[name])
