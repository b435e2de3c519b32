"""Hash packing and product quantization: codes, reconstruction and ADC agree."""

import numpy as np
import pytest
import torch

from meet_milvus.model.hashing import code_bits, hamming, pack_codes
from meet_milvus.model.quantization import (
    ProductQuantizer,
    Quantizers,
    adc_scores,
    adc_tables,
    pq_encode,
    pq_reconstruct,
)
from meet_milvus.model.vocab import UNK, Vocabulary
from meet_milvus_training.losses import QuantizationLoss

pytestmark = pytest.mark.unit


def test_pack_codes_is_the_contracts_packbits():
    head = np.array([[0.9, -0.2, 0.1, -0.7, -0.1, 0.3, 0.0, 0.8] * 2], dtype=np.float32)
    codes = pack_codes(head)
    assert codes.dtype == np.uint8 and codes.shape == (1, 2)
    # Big bit order: the first output is the most significant bit; 0.0 counts as +1 (>= 0, as
    # MEET's reference), -0.0 too (it equals 0).
    assert codes[0, 0] == 0b10100111
    assert np.array_equal(codes, np.packbits(head >= 0, axis=1))
    assert np.array_equal(pack_codes(-np.zeros((1, 8))), [[0xFF]])


@pytest.mark.unit
def test_sign_rule_is_shared_by_codes_and_the_quantization_loss():
    # L_q pulls an output of exactly 0 towards +1, the bit its stored code has.
    head = torch.zeros(1, 8, requires_grad=True)
    loss = QuantizationLoss()(head, torch.zeros(1, 8))
    assert float(loss) == pytest.approx(1.0)  # (0 - 1)^2 averaged over 8 outputs
    loss.backward()
    assert (head.grad < 0).all()  # gradient descent moves every output up, towards +1
    assert np.array_equal(code_bits(head.detach()).numpy(), code_bits(np.zeros((1, 8))))
    assert pack_codes(np.zeros((1, 8)))[0, 0] == 0xFF


def test_hamming_counts_differing_signs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 64)), rng.normal(size=(300, 64))
    d = hamming(pack_codes(a), pack_codes(b), chunk=3)
    signs = np.sign(a) @ np.sign(b).T
    assert d.shape == (7, 300)
    assert np.array_equal(d, ((64 - signs) / 2).astype(np.int32))


def _clustered(n=600, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, dim, generator=g)
    x = centres[torch.randint(5, (n,), generator=g)] + 0.01 * torch.randn(n, dim, generator=g)
    return x


def test_pq_codes_are_nearest_codewords_and_adc_matches_reconstruction():
    x = _clustered()
    pq = ProductQuantizer(16, 4, 3)
    pq.fit(x, iters=10, seed=1)
    assert pq.codebooks.shape == (4, 8, 4)
    codes = pq.encode(x)
    assert codes.shape == (600, 4)
    # Brute force: the nearest codeword of every sub-vector.
    parts = x.view(600, 4, 4)
    dist = ((parts[:, :, None, :] - pq.codebooks[None]) ** 2).sum(-1)
    assert torch.equal(codes, dist.argmin(-1))
    # Five tight clusters: reconstruction is close.
    rec = pq.reconstruct(codes)
    assert ((rec - x) ** 2).sum(1).mean() < 0.01
    # ADC through lookup tables equals queries against reconstructed gallery vectors.
    q = torch.randn(9, 16)
    assert torch.allclose(pq.adc(q, codes), q @ rec.T, atol=1e-5)


def test_reconstruction_of_codewords_is_exact_and_fit_is_deterministic():
    pq = ProductQuantizer(4, 2, 2, codebooks=torch.arange(16.0).view(2, 4, 2))
    codes = torch.tensor([[0, 3], [2, 1]])
    rec = pq.reconstruct(codes)
    assert rec.tolist() == [[0, 1, 14, 15], [4, 5, 10, 11]]
    assert torch.equal(pq.encode(rec), codes)
    x = _clustered(dim=8)
    a = ProductQuantizer(8, 2, 4).fit(x, iters=5, seed=3)
    b = ProductQuantizer(8, 2, 4).fit(x, iters=5, seed=3)
    assert torch.equal(a, b)


def test_fewer_points_than_codewords_still_fits():
    pq = ProductQuantizer(8, 2, 8)
    pq.fit(torch.randn(10, 8), iters=3)
    assert torch.isfinite(pq.codebooks).all()
    assert pq.encode(torch.randn(3, 8)).max() < 256


def test_quantizer_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ProductQuantizer(10, 4, 8)
    with pytest.raises(ValueError):
        ProductQuantizer(8, 2, 9)
    with pytest.raises(ValueError):
        ProductQuantizer(8, 2, 2, codebooks=torch.zeros(2, 3, 4))


def test_vocabulary_is_deterministic_and_maps_unknown_words():
    v = Vocabulary.build(["A dog.", "a cat and a dog"])
    assert v.words == Vocabulary.build(["a cat and a dog", "A dog."]).words
    ids = v.ids("a zebra", max_len=10)
    assert ids[0] == v.index["<start>"] and ids[-1] == v.index["<end>"]
    assert ids[2] == v.index[UNK]
    batch = v.batch(["a dog", "a"], max_len=10)
    assert batch["lengths"].tolist() == [4, 3] and batch["tokens"][1, 3] == 0


@pytest.mark.unit
def test_per_modality_quantizers_fit_each_modality_on_its_own():
    images = _clustered(seed=1)
    texts = _clustered(seed=2) + 3.0  # elsewhere: a shared set would split its codewords
    shared = Quantizers(16, 4, 3)
    shared.fit(images, texts, iters=5, seed=0)
    assert shared["image"] is shared["text"] and shared.codebooks.shape == (4, 8, 4)
    per = Quantizers(16, 4, 3, "per_modality")
    per.fit(images, texts, iters=5, seed=0)
    assert per.codebooks.shape == (2, 4, 8, 4)
    alone = ProductQuantizer(16, 4, 3)
    assert torch.equal(per["text"].codebooks, alone.fit(texts, iters=5, seed=0))
    # Each modality is reconstructed better by its own codebooks than by the shared set.
    for m, x in (("image", images), ("text", texts)):
        err = ((per.quantize(x, m) - x) ** 2).sum()
        assert err < ((shared.quantize(x, m) - x) ** 2).sum()
    # Stored codebooks read back with their layout.
    again = Quantizers.from_codebooks(per.codebooks)
    assert again.layout == "per_modality" and torch.equal(again["image"].codebooks,
                                                          per["image"].codebooks)  # fmt: skip
    assert Quantizers.from_codebooks(shared.codebooks).layout == "shared"
    with pytest.raises(ValueError, match="per modality"):
        Quantizers(16, 4, 3, "per_modality", shared.codebooks)
    with pytest.raises(ValueError, match="PQ layout 'both'"):
        Quantizers(16, 4, 3, "both")


def test_numpy_pq_of_the_runtime_equals_the_trainers_quantizer():
    """The stages' numpy PQ (encode, reconstruct, ADC over shared or per-query codes) gives
    what the torch ProductQuantizer gives for the same codebooks."""
    g = torch.Generator().manual_seed(3)
    q = ProductQuantizer(16, 4, 3)
    q.fit(torch.randn(400, 16, generator=g), iters=5)
    books = q.codebooks.numpy()
    x, queries = torch.randn(50, 16, generator=g), torch.randn(6, 16, generator=g)
    codes = pq_encode(x.numpy(), books)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, q.encode(x).numpy())
    np.testing.assert_allclose(pq_reconstruct(codes, books), q.reconstruct(q.encode(x)).numpy())
    tables = adc_tables(queries.numpy(), books)
    expected = q.adc(queries, torch.from_numpy(codes.astype(np.int64))).numpy()
    np.testing.assert_allclose(adc_scores(tables, codes), expected, rtol=1e-5, atol=1e-5)
    picks = np.random.default_rng(0).integers(0, 50, size=(6, 9))  # each query's candidates
    own = adc_scores(tables, codes[picks])
    np.testing.assert_allclose(own, np.take_along_axis(expected, picks, 1), rtol=1e-5, atol=1e-5)
