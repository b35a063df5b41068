"""T5TextEncoder and CachedTextEncoder on tiny random T5 / umT5 checkpoints built here (no hub)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from wamforge.model_zoo.encoders.t5 import T5TextEncoder
from wamforge.model_zoo.encoders.text_cache import CachedTextEncoder

CAPTIONS = ["pick up the red block", "open the drawer", "push the button to the left", "reach the goal"]
MAX_TOKENS = 8
PAD, EOS, UNK = 0, 1, 2


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(CAPTIONS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_checkpoint(directory: Path, model_type: str) -> Path:
    tokenizer = build_tokenizer()
    config_class, model_class = {"t5": (T5Config, T5EncoderModel), "umt5": (UMT5Config, UMT5EncoderModel)}[model_type]
    config = config_class(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                          pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD)
    torch.manual_seed(0)
    model_class(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {kind: build_checkpoint(tmp_path_factory.mktemp(kind), kind) for kind in ("t5", "umt5")}


@pytest.fixture(scope="module")
def encoders(checkpoints) -> dict[str, T5TextEncoder]:
    return {kind: T5TextEncoder(path, max_tokens=MAX_TOKENS) for kind, path in checkpoints.items()}


class CountingEncoder(nn.Module):
    """Records every batch the cache sends to the real encoder."""

    def __init__(self, encoder: T5TextEncoder):
        super().__init__()
        self.encoder = encoder
        self.calls: list[list[str]] = []
        self.encoder_id, self.max_tokens = encoder.encoder_id, encoder.max_tokens

    def forward(self, texts):
        self.calls.append(list(texts))
        return self.encoder(texts)


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_shapes_mask_and_zeroed_padding(encoders, kind):
    texts = ["open the drawer", "", "pick up the red block and push the button to the left"]
    embeddings, mask = encoders[kind](texts)
    assert embeddings.shape == (3, MAX_TOKENS, 32) and mask.shape == (3, MAX_TOKENS) and mask.dtype == torch.bool
    # words + </s>; "" is just </s>; the long one is truncated to MAX_TOKENS (still ending in </s>)
    assert mask.sum(1).tolist() == [4, 1, MAX_TOKENS]
    assert mask[:, 0].all() and (mask[:, :-1] >= mask[:, 1:]).all()  # right padding
    assert (embeddings[~mask] == 0).all()
    assert (embeddings[mask].abs().sum(-1) > 0).all()


def test_frozen_and_stays_in_eval(encoders):
    encoder = encoders["umt5"]
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # e.g. from the parent model's .train(): must not enable dropout
    assert not any(module.training for module in encoder.modules())
    embeddings, _ = encoder(CAPTIONS)
    assert not embeddings.requires_grad
    again, _ = encoder(CAPTIONS)
    assert torch.equal(embeddings, again)


def test_refuses_pickle_only_checkpoint(tmp_path, checkpoints):
    model = T5EncoderModel.from_pretrained(checkpoints["t5"], local_files_only=True, use_safetensors=True)
    model.config.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        T5TextEncoder(tmp_path, max_tokens=MAX_TOKENS)


def test_encoder_id_names_type_version_and_precision(checkpoints, encoders):
    t5_id, umt5_id = encoders["t5"].encoder_id, encoders["umt5"].encoder_id
    assert t5_id.startswith("t5@") and umt5_id.startswith("umt5@") and t5_id.endswith("-float32")
    assert T5TextEncoder(checkpoints["t5"], max_tokens=MAX_TOKENS).encoder_id == t5_id  # stable across loads
    bf16 = T5TextEncoder(checkpoints["t5"], max_tokens=MAX_TOKENS).to(torch.bfloat16)
    assert bf16.encoder_id == t5_id.replace("float32", "bfloat16")
    assert bf16(CAPTIONS)[0].dtype == torch.bfloat16


def test_cache_matches_encoder_and_encodes_each_caption_once(tmp_path, encoders):
    encoder = CountingEncoder(encoders["umt5"])
    cache = CachedTextEncoder(encoder, tmp_path)
    batches = [[CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]],
               [CAPTIONS[1], CAPTIONS[2], CAPTIONS[0], CAPTIONS[2], ""],
               [CAPTIONS[2], "", CAPTIONS[1]]]
    for batch in batches:
        embeddings, mask = cache(batch)
        expected_embeddings, expected_mask = encoders["umt5"](batch)
        assert torch.equal(mask, expected_mask)
        assert torch.equal(embeddings, expected_embeddings)
    # only the uncached captions of each batch, each once
    assert encoder.calls == [[CAPTIONS[0], CAPTIONS[1]], [CAPTIONS[2], ""]]


def test_cache_survives_a_new_process_via_disk(tmp_path, encoders):
    first = CachedTextEncoder(CountingEncoder(encoders["t5"]), tmp_path)
    expected = first(CAPTIONS)
    encoder_id = encoders["t5"].encoder_id
    files = sorted((tmp_path / encoder_id).glob("*/*.safetensors"))
    assert len(files) == len(CAPTIONS) and not list(tmp_path.rglob("*.tmp"))
    assert all(f.parent.name == f.stem[:2] for f in files)

    # a new cache object starts with empty memory, like a new process: everything comes from disk
    encoder = CountingEncoder(encoders["t5"])
    embeddings, mask = CachedTextEncoder(encoder, tmp_path)(CAPTIONS)
    assert encoder.calls == []
    assert torch.equal(embeddings, expected[0]) and torch.equal(mask, expected[1])


def test_memory_is_bounded_and_evicted_entries_come_from_disk(tmp_path, encoders):
    encoder = CountingEncoder(encoders["t5"])
    cache = CachedTextEncoder(encoder, tmp_path, max_memory_entries=2)
    expected = cache(CAPTIONS[:3])
    assert len(cache.memory) == 2
    assert torch.equal(cache(CAPTIONS[:3])[0], expected[0])
    assert len(encoder.calls) == 1


def test_keys_differ_per_encoder_id(tmp_path, encoders):
    t5 = CachedTextEncoder(CountingEncoder(encoders["t5"]), tmp_path)
    umt5 = CachedTextEncoder(CountingEncoder(encoders["umt5"]), tmp_path)
    caption = CAPTIONS[0]
    assert t5.key(encoders["t5"].encoder_id, caption) != umt5.key(encoders["umt5"].encoder_id, caption)
    t5_embeddings, _ = t5([caption])
    umt5_embeddings, _ = umt5([caption])  # same dir, same caption: must not hit the t5 entry
    assert len(umt5.encoder.calls) == 1 and not torch.equal(t5_embeddings, umt5_embeddings)
    assert {p.name for p in tmp_path.iterdir()} == {encoders["t5"].encoder_id, encoders["umt5"].encoder_id}
