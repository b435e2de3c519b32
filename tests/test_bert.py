"""meet_milvus.model.bert serves the bundled MiniLM as transformers does, without transformers."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from meet_milvus.errors import MeetError
from meet_milvus.model.bert import Bert, BertTokenizer, is_plain_bert
from meet_milvus.model.encoders import BertTextEncoder, LazyTransformer, load_transformer
from meet_milvus.model.text_model import default_text_model, hidden_size

pytestmark = pytest.mark.unit

TEXTS = [
    "three wooden cottages",
    "",
    "a very long caption about a lion " * 30,  # truncated at max_len
    "Naïve café — 東京 🦁 tab\there\nand a new line",
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    path = default_text_model()
    return path, Bert.from_folder(path).eval(), BertTokenizer(path)


@pytest.fixture(scope="module")
def reference(minilm):
    from transformers import AutoModel, AutoTokenizer

    path = minilm[0]
    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@pytest.mark.parametrize("max_len", [8, 32, 128])
def test_tokens_and_states_match_transformers(minilm, reference, max_len):
    _, model, tokenizer = minilm
    ref_model, ref_tokenizer = reference
    ours = tokenizer.encode(TEXTS, max_len)
    theirs = ref_tokenizer(
        TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    with torch.no_grad():
        states = model(**ours)[0]
        ref = ref_model(input_ids=theirs["input_ids"], attention_mask=theirs["attention_mask"])[0]
    real = ours["attention_mask"].bool()  # padded positions are masked out downstream
    assert states.shape == ref.shape
    assert (states - ref)[real].abs().max() < 1e-4
    assert tokenizer.count(TEXTS) == [len(ids) for ids in ref_tokenizer(TEXTS)["input_ids"]]


def test_a_caption_is_encoded_alike_alone_and_in_a_padded_batch(minilm):
    _, model, tokenizer = minilm
    with torch.no_grad():
        batch = model(**tokenizer.encode(TEXTS, 64))[0]
        alone = model(**tokenizer.encode(TEXTS[:1], 64))[0]
    n = alone.shape[1]
    assert torch.allclose(batch[0, :n], alone[0], atol=1e-5)


def test_the_serving_path_needs_no_transformers(minilm):
    # A fresh interpreter that cannot import transformers still encodes a caption.
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from meet_milvus.model.encoders import load_transformer\n"
        "from meet_milvus.model.text_model import default_text_model\n"
        "model, tok = load_transformer(default_text_model())\n"
        "print(tuple(model(**tok.encode(['a dog'], 32))[0].shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 4, 384)"


def test_fine_tuning_trains_with_dropout_and_keeps_transformers_keys(minilm):
    path, _, tokenizer = minilm
    model = Bert.from_folder(path)
    keys = set(load_file(path / "model.safetensors")) - {"embeddings.position_ids"}
    assert set(model.state_dict()) == keys  # a fine-tuned checkpoint keeps transformers' names
    batch = tokenizer.encode(TEXTS[:2], 16)
    model.train()
    first, second = model(**batch)[0], model(**batch)[0]
    assert not torch.allclose(first, second)  # dropout is on in training
    first.sum().backward()
    grad = model.encoder["layer"][0].attention["self"].query.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch)[0], model(**batch)[0])


def _copy_model(src, dst, tensors=None, config=None):
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    if config is not None:
        raw = json.loads((src / "config.json").read_text())
        raw.update(config)
        (dst / "config.json").write_text(json.dumps(raw))
    weights = load_file(src / "model.safetensors")
    if tensors is not None:
        weights = tensors(weights)
    save_file(weights, dst / "model.safetensors")
    return dst


def test_a_broken_model_folder_is_refused_in_one_line(minilm, tmp_path):
    src = minilm[0]
    missing = _copy_model(
        src, tmp_path / "missing", lambda w: {k: v for k, v in w.items() if "layer.5." not in k}
    )
    with pytest.raises(MeetError, match=r"no tensor encoder\.layer\.5\..* \(and 15 more\)"):
        Bert.from_folder(missing)
    wide = _copy_model(src, tmp_path / "wide", config={"hidden_size": 768})
    with pytest.raises(MeetError, match=r"has shape \(30522, 384\), config.json implies"):
        Bert.from_folder(wide)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "tokenizer.json").write_text("{not json")
    with pytest.raises(MeetError, match="tokenizer.json: unreadable") as e:
        BertTokenizer(tmp_path / "garbled")
    assert "\n" not in str(e.value)
    with pytest.raises(MeetError, match="no hidden_size"):
        hidden_size(tmp_path / "garbled")


def test_other_model_families_are_served_by_transformers(minilm, tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    src = minilm[0]
    folder = tmp_path / "distil"
    folder.mkdir()
    torch.manual_seed(0)
    config = DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)
    assert is_plain_bert(src) and not is_plain_bert(folder)
    model, tokenizer = load_transformer(folder)
    assert not isinstance(model, Bert)
    batch = tokenizer.encode(TEXTS, 16)
    assert torch.equal(batch["input_ids"], BertTokenizer(src).encode(TEXTS, 16)["input_ids"])
    assert tokenizer.count(TEXTS) == BertTokenizer(src).count(TEXTS)
    encoder = BertTextEncoder(LazyTransformer(folder), None, 16, 8, 1, 0.0, 0.0, True, 16, False)
    assert encoder(**encoder.tokenize(TEXTS)).shape == (len(TEXTS), 16)
