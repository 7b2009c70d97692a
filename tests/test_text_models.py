"""Text models end to end: real MiniLM fine-tuned on tiny tasks, merged, loaded back in
transformers and sentence-transformers; tied weights; vocabulary-size rules; several
architectures by tensor name."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mdamerge  # noqa: E402
from mdamerge.errors import CheckpointError  # noqa: E402
from mdamerge.hf.text import is_sentence_transformer, minilm_path, tied_word_embeddings  # noqa: E402
from mdamerge.io.checkpoint import Checkpoint  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


POSITIVE = ["great", "wonderful", "excellent", "lovely", "superb", "delightful"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "bad", "boring"]
SPORTS = ["football", "tennis", "the marathon", "basketball", "the match", "cycling"]
FOOD = ["pasta", "the soup", "a sandwich", "the salad", "pizza", "the curry"]


def sentiment_task():
    texts = [f"the film was {w}" for w in POSITIVE] + [f"the film was {w}" for w in NEGATIVE]
    return texts, [1] * len(POSITIVE) + [0] * len(NEGATIVE)


def topic_task():
    texts = [f"we talked about {w} all day" for w in SPORTS] + [f"we talked about {w} all day" for w in FOOD]
    return texts, [1] * len(SPORTS) + [0] * len(FOOD)


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def finetune(base_dir, task, out_dir, steps=3, seed=0):
    """A few full fine-tuning steps of the encoder with a linear head on mean-pooled features."""
    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    model = transformers.AutoModel.from_pretrained(base_dir)
    head = torch.nn.Linear(model.config.hidden_size, 2)
    texts, labels = task
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor(labels)
    optim = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=5e-5)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def minilm_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    base = minilm_path()
    return base, [finetune(base, sentiment_task(), root / "sentiment", seed=1),
                  finetune(base, topic_task(), root / "topic", seed=2)]


def test_minilm_fine_tunes_merge_and_load_in_transformers_and_sentence_transformers(minilm_zoo, tmp_path):
    base, fts = minilm_zoo
    assert is_sentence_transformer(base)
    mdamerge.merge({"method": "task_arithmetic", "base_model": str(base), "models": [str(p) for p in fts]},
                   tmp_path / "merged", progress=False)
    out = tmp_path / "merged"
    # tokenizer and sentence-transformers files come from the base
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "config.json"):
        assert (out / name).is_file(), name
    # weights: theta_0 + 0.3 * sum_t (theta_t - theta_0), checked against the files
    base_ck, ft_cks, out_ck = Checkpoint(base), [Checkpoint(p) for p in fts], Checkpoint(out)
    for name in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        b = base_ck.get(name)
        torch.testing.assert_close(out_ck.get(name), b + 0.3 * sum(f.get(name) - b for f in ft_cks))
    assert torch.equal(out_ck.get("embeddings.position_ids"), base_ck.get("embeddings.position_ids"))

    model, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the film was great", "pasta again"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert torch.isfinite(hidden).all()

    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(out), device="cpu")
    emb = encoder.encode(["the film was great", "we talked about pizza all day"], convert_to_tensor=True)
    assert emb.shape == (2, 384) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))  # the Normalize module is in place
    reference = SentenceTransformer(str(base), device="cpu").encode(["the film was great"], convert_to_tensor=True)
    assert not torch.allclose(emb[0], reference[0])  # the merge changed the encoder


def test_minilm_mda_merge_loads_in_sentence_transformers(minilm_zoo, tmp_path):
    from sentence_transformers import SentenceTransformer

    base, fts = minilm_zoo
    # the 30522 x 384 word embedding is kept at the base to keep this test quick
    mdamerge.merge({"method": "mda", "base_model": str(base), "models": [str(p) for p in fts],
                    "exclude": ["word_embeddings"]}, tmp_path / "m", progress=False)
    emb = SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(["a sentence"], convert_to_tensor=True)
    assert emb.shape == (1, 384) and torch.isfinite(emb).all()


def perturbed(model, seed, scale=0.02):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def test_tied_embeddings_are_stored_once_and_re_tied_on_load(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    for t in range(2):
        perturbed(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base"), t).save_pretrained(tmp_path / f"ft{t}")
    assert tied_word_embeddings(tmp_path / "base")
    assert "lm_head.weight" not in Checkpoint(tmp_path / "base").keys()
    mdamerge.merge({"method": "task_arithmetic", "base_model": str(tmp_path / "base"),
                    "models": [str(tmp_path / "ft0"), str(tmp_path / "ft1")]}, tmp_path / "out", progress=False)
    assert "lm_head.weight" not in Checkpoint(tmp_path / "out").keys()
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    b = Checkpoint(tmp_path / "base").get("model.embed_tokens.weight")
    expected = b + 0.3 * sum(Checkpoint(tmp_path / f"ft{t}").get("model.embed_tokens.weight") - b for t in range(2))
    torch.testing.assert_close(model.model.embed_tokens.weight.detach(), expected)
    torch.testing.assert_close(model.lm_head.weight.detach(), expected)  # tied to the merged embedding
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def tiny_bert(vocab=60):
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(cfg)


@pytest.fixture
def vocab_zoo(tmp_path):
    """A BERT base (60 tokens), one fine-tune with 3 added tokens, one with the base vocabulary."""
    tiny_bert().save_pretrained(tmp_path / "base")
    grown = perturbed(transformers.BertForMaskedLM.from_pretrained(tmp_path / "base"), 1)
    grown.resize_token_embeddings(63)
    grown.save_pretrained(tmp_path / "grown")
    perturbed(transformers.BertForMaskedLM.from_pretrained(tmp_path / "base"), 2).save_pretrained(tmp_path / "same")
    return tmp_path


def test_vocabulary_mismatch_is_an_error_by_default(vocab_zoo, tmp_path):
    cfg = {"method": "tsv", "base_model": str(vocab_zoo / "base"), "models": [str(vocab_zoo / "grown"), str(vocab_zoo / "same")]}
    with pytest.raises(CheckpointError, match=r"shape mismatch for '.*word_embeddings.weight': base \[60, 16\] vs \[63, 16\]"
                                              r".*vocab_mismatch: shared"):
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_shared_vocabulary_rule_merges_shared_rows_and_loads(vocab_zoo, tmp_path):
    cfg = {"method": "task_arithmetic", "base_model": str(vocab_zoo / "base"), "vocab_mismatch": "shared",
           "models": [str(vocab_zoo / "grown"), str(vocab_zoo / "same")]}
    mdamerge.merge(cfg, tmp_path / "out", progress=False)
    model, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    name = "bert.embeddings.word_embeddings.weight"
    b = Checkpoint(vocab_zoo / "base").get(name)
    grown, same = Checkpoint(vocab_zoo / "grown").get(name), Checkpoint(vocab_zoo / "same").get(name)
    assert grown.shape[0] == 63
    merged = model.bert.embeddings.word_embeddings.weight.detach()
    assert merged.shape == b.shape  # the base's vocabulary: the 3 added rows are not in the output
    torch.testing.assert_close(merged, b + 0.3 * ((grown[:60] - b) + (same - b)))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 59]])).logits).all()


def test_base_rows_beyond_the_shared_vocabulary_keep_the_base_values(tmp_path):
    big = tiny_bert(63)
    big.save_pretrained(tmp_path / "base")
    small = perturbed(transformers.BertForMaskedLM.from_pretrained(tmp_path / "base"), 3)
    small.resize_token_embeddings(60)
    small.save_pretrained(tmp_path / "small")
    perturbed(transformers.BertForMaskedLM.from_pretrained(tmp_path / "base"), 4).save_pretrained(tmp_path / "other")
    cfg = {"method": "mda", "base_model": str(tmp_path / "base"), "vocab_mismatch": "shared",
           "models": [str(tmp_path / "small"), str(tmp_path / "other")]}
    mdamerge.merge(cfg, tmp_path / "out", progress=False)
    name = "bert.embeddings.word_embeddings.weight"
    base, out = Checkpoint(tmp_path / "base").get(name), Checkpoint(tmp_path / "out").get(name)
    assert out.shape == (63, 16)
    assert torch.equal(out[60:], base[60:])
    assert not torch.allclose(out[:60], base[:60])
    transformers.BertForMaskedLM.from_pretrained(tmp_path / "out")


ARCHITECTURES = {
    "bert": lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)),
    "roberta": lambda: transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2,
                                                                         n_positions=16)),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_merge_by_tensor_name_and_reload(tmp_path, arch):
    torch.manual_seed(0)
    ARCHITECTURES[arch]().save_pretrained(tmp_path / "base")
    auto = transformers.AutoModel if arch in ("bert", "roberta") else transformers.AutoModelForCausalLM
    for t in range(3):
        perturbed(auto.from_pretrained(tmp_path / "base"), t).save_pretrained(tmp_path / f"ft{t}")
    mdamerge.merge({"method": "mda", "base_model": str(tmp_path / "base"),
                    "models": [str(tmp_path / f"ft{t}") for t in range(3)]}, tmp_path / "out", progress=False)
    model, info = auto.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    base = auto.from_pretrained(tmp_path / "base").state_dict()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, base[k])]
    assert len(changed) >= 5
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3, 4]]))
    assert torch.isfinite(out[0]).all()
