"""Evaluating a loaded gallery: the re-ranker's grid search agrees with the methods it tunes."""

import pytest

from meet_milvus import milvus_eval
from meet_milvus_loaders.milvus_loader import encode_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def queries(searcher, split, runtime_settings):
    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 128, False)
    return {"i2t": images, "t2i": texts}


def test_tune_rerank_scores_each_setting_as_the_searcher_would(searcher, split, queries):
    c = searcher.config
    assert c.alpha == 0.0 and c.beta > 0  # the defaults: complementarity alone
    grid = milvus_eval.tune_rerank(
        searcher, split, queries, alphas=(0.0,), betas=(0.0, c.beta), zs=(c.z,)
    )
    assert len(grid) == 2 and grid[0].rsum >= grid[1].rsum  # best first
    rsum = {r.beta: r.rsum for r in grid}
    # Beta 0 is re-ranking off: the plain cascade; the searcher's own weights: its re-ranking.
    plain = milvus_eval.run_method(searcher, "cascade", split, queries)
    reranked = milvus_eval.run_method(searcher, "cascade + re-ranking", split, queries)
    assert rsum[0.0] == pytest.approx(plain.recall.rsum)
    assert rsum[c.beta] == pytest.approx(reranked.recall.rsum)
    # The searcher's config is the caller's: evaluation never swaps it.
    assert searcher.config == c
