"""Weight sync in size-capped buckets (rl_div.sync.buckets): the pure bucketing and
checks, then real Ray actors (a single Learner, 2 FSDP2 ShardedLearner ranks over gloo, one hf
rollout worker) started once for the module on the tiny Llama."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch
from helpers import FSDP2, SYNC_BUCKET_MB, sync_config

from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.sync.buckets import (
    BucketPayload,
    WeightSyncError,
    bucket_payload,
    copy_into,
    distinct_state,
    fetch_bucket,
    load_buckets,
    pack_bucket,
    stream_buckets,
    tied_names,
    unpack_bucket,
    with_aliases,
)
from rl_div.sync.payloads import model_tensors, payload_size
from rl_div.sync.push import push_weights
from rl_div.tasks import TASKS


def f32(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)


# ---- pure: bucketing, wire format, name checks ---------------------------------------------
def test_buckets_are_capped_ordered_and_hold_every_tensor_once() -> None:
    # bytes: a 40, b 40, big 400 (over the cap), c 4, d 6 (bf16), e 16 (int64)
    tensors = {"a": f32(10), "b": f32(10).reshape(2, 5), "big": f32(100), "c": f32(1),
               "d": torch.ones(3, dtype=torch.bfloat16), "e": torch.arange(2)}
    put: list[dict[str, torch.Tensor]] = []
    refs = list(stream_buckets(tensors, 80, lambda b: put.append(b) or len(put) - 1))
    # a + b = 80 fits the cap exactly; big alone; c + d + e = 26
    assert [list(b) for b in put] == [["a", "b"], ["big"], ["c", "d", "e"]]
    assert refs == [0, 1, 2]  # what put returned, in order
    assert all(put[i][n] is tensors[n] for i in range(3) for n in put[i])  # no copies
    # one byte less and a, b no longer share a bucket
    assert [list(b) for b in stream_buckets(tensors, 79, dict)] == [["a"], ["b"], ["big"], ["c", "d", "e"]]


def test_a_bucket_is_put_and_released_before_the_next_one_fills() -> None:
    """The sender holds one bucket and one tensor: a bucket is put as soon as a tensor overflows it,
    and its tensors (fresh ones, as a sharded learner's gathers are) are freed before more are read."""
    read: list[str] = []
    alive: dict[str, weakref.ref] = {}

    def source() -> Iterator[tuple[str, torch.Tensor]]:
        for name in ("a", "b", "c", "d", "e"):
            read.append(name)
            yield name, f32(10)  # 40 bytes each
            if name == "c":  # asked for d: bucket [a, b] was put, and nothing may hold it any more
                gc.collect()
                assert [n for n, ref in alive.items() if ref() is not None] == [], "bucket [a, b] still alive"

    def put(bucket: dict[str, torch.Tensor]) -> list[str]:
        alive.update({n: weakref.ref(t) for n, t in bucket.items()})
        return list(bucket)

    stream = stream_buckets(source(), 80, put)
    assert next(stream) == ["a", "b"] and read == ["a", "b", "c"]  # one bucket + the tensor that overflowed it
    assert list(stream) == [["c", "d"], ["e"]]


def test_payload_lists_each_buckets_names() -> None:
    payload = bucket_payload([("x", f32(4)), ("y", f32(4)), ("z", f32(4))], 32, lambda b: sorted(b))
    assert payload == BucketPayload(refs=(["x", "y"], ["z"]), names=(("x", "y"), ("z",)))
    assert len(payload) == 3
    assert len(bucket_payload([], 32, dict)) == 0


def test_tied_names_are_loaded_again_under_their_own_name_for_vllm() -> None:
    emb = f32(4)
    payload = BucketPayload(({"emb": emb, "x": f32(1)},), (("emb", "x"),), aliases=(("head", "emb"),))
    assert payload_size(payload) == 3  # what each vLLM rank reports loaded: emb, head, x
    pairs = with_aliases(payload.refs[0], payload.aliases)
    assert [n for n, _ in pairs] == ["emb", "head", "x"] and pairs[1][1] is emb


def test_packed_bucket_round_trips_every_dtype_and_shape() -> None:
    bucket = {"bf16": torch.tensor([[1.5, -2.25], [3.0, 1e-3]], dtype=torch.bfloat16),
              "f32": torch.linspace(-1, 1, 7), "i64": torch.tensor([3, -1]), "scalar": torch.tensor(2.5),
              "empty": torch.zeros(0, 4), "bool": torch.tensor([True, False])}
    for copy in (False, True):
        got = unpack_bucket(pack_bucket(bucket), copy=copy)
        assert list(got) == list(bucket)
        for name, t in bucket.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name


def test_names_are_checked_before_anything_loads() -> None:
    expected = {"w", "v"}
    loaded: list[str] = []

    def load(payload: BucketPayload) -> int:
        return load_buckets(payload, lambda b: loaded.extend(b), expected, fetch=lambda ref: ref)

    def payload(*buckets: dict[str, torch.Tensor]) -> BucketPayload:
        return BucketPayload(tuple(buckets), tuple(tuple(b) for b in buckets))

    w, v = {"w": f32(2)}, {"v": f32(2)}
    with pytest.raises(WeightSyncError, match=r"missing: \['v'\]"):
        load(payload(w))
    with pytest.raises(WeightSyncError, match=r"not in this model: \['x'\]"):
        load(payload(w, v, {"x": f32(1)}))
    with pytest.raises(WeightSyncError, match=r"sent more than once: \['w'\]"):
        load(payload(w, v, w))
    assert loaded == []
    with pytest.raises(WeightSyncError, match="payload listed"):  # a bucket that is not what was listed
        load_buckets(BucketPayload(({"w": f32(2)},), (("v",),)), loaded.extend, {"v"}, fetch=lambda ref: ref)
    assert load(payload(w, v)) == 2 and loaded == ["w", "v"]


def test_buckets_copy_one_model_into_another_exactly_tied_weights_once() -> None:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    source, target = make_tiny_llama(tok, seed=1), make_tiny_llama(tok, seed=2)
    payload = bucket_payload(model_tensors(source, None), int(SYNC_BUCKET_MB * 2**20), pack_bucket)
    assert len(payload.refs) >= 3
    assert "lm_head.weight" not in {n for names in payload.names for n in names}  # tied to the embeddings
    targets = dict(distinct_state(target))
    with torch.no_grad():
        assert load_buckets(payload, lambda b: copy_into(targets, b), targets, fetch=unpack_bucket) == len(targets)
    for name, t in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], t), name
    assert target.lm_head.weight is target.model.embed_tokens.weight
    assert tied_names(source) == {"lm_head.weight": "model.embed_tokens.weight"}
    # engines in bf16: every tensor leaves cast (the learner keeps float32 masters)
    for name, t in model_tensors(source, torch.bfloat16):
        assert t.dtype == torch.bfloat16 and torch.equal(t, source.state_dict()[name].to(torch.bfloat16)), name


# ---- real Ray actors -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=3), tok, tmp_path_factory.mktemp("m") / "tiny"))


def perturb(actor: Any) -> None:
    """The same elementwise change on any learner (on a rank: its own shards), standing in for an
    update: every weight moves away from the checkpoint the rollout worker starts from."""
    with torch.no_grad():
        for p in actor.model.parameters():
            p.mul_(1.5).add_(0.01)


@pytest.fixture(scope="module")
def actors(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A single learner and a 2-rank fsdp2 learner, both perturbed alike, and one hf rollout worker."""
    from rl_div.cluster.actors import init_ray, start_learner, start_rollout_worker, wait_started

    out = str(tmp_path_factory.mktemp("o"))
    if ray.is_initialized():  # an earlier module's Ray (2 CPUs) cannot hold three learners and a worker
        ray.shutdown()
    init_ray(sync_config(model_path, out))
    try:
        single = start_learner(sync_config(model_path, out), model_path)
        sharded = start_learner(sync_config(model_path, out, *FSDP2), model_path)
        worker = start_rollout_worker(sync_config(model_path, out), model_path)
        wait_started({"worker": worker, **{f"rank {i}": a for i, a in enumerate(sharded.actors)}}, 300)
        ray.get([single.on_every_rank(perturb), sharded.on_every_rank(perturb)], timeout=300)
        yield {"single": single, "sharded": sharded, "worker": worker, "out": out}
    finally:
        ray.shutdown()


def worker_state(worker: Any) -> dict[str, torch.Tensor]:
    return ray.get(worker.__ray_call__.remote(lambda host: host.worker.model.state_dict()))


def single_state(actors: dict[str, Any]) -> dict[str, torch.Tensor]:
    return ray.get(actors["single"].on_every_rank(lambda learner: learner.model.state_dict()))


@pytest.mark.slow
def test_single_learner_syncs_an_hf_worker_exactly_in_several_buckets(actors: dict[str, Any]) -> None:
    want = single_state(actors)
    assert not torch.equal(worker_state(actors["worker"])["model.norm.weight"], want["model.norm.weight"])
    shipped = push_weights(actors["single"], [actors["worker"]], "object_store", 1, timeout_s=120)
    payload = ray.get(shipped)
    assert len(payload.refs) >= 3 and payload.aliases == (("lm_head.weight", "model.embed_tokens.weight"),)
    for ref in payload.refs:
        sizes = [t.numel() * t.element_size() for t in fetch_bucket(ref).values()]
        assert sum(sizes) <= SYNC_BUCKET_MB * 2**20 or len(sizes) == 1
    got = worker_state(actors["worker"])
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    assert ray.get(actors["worker"].policy_version.remote()) == 1


@pytest.mark.slow
def test_two_rank_buckets_equal_the_one_process_state(actors: dict[str, Any], model_path: str) -> None:
    """Every rank joins the gathers; rank 0's buckets hold, in state-dict order, exactly the
    tensors of one unsharded process given the same change; rank 1 sends nothing."""
    sharded = actors["sharded"].actors
    rank0, rank1 = ray.get([a.get_weight_buckets.remote() for a in sharded], timeout=120)
    assert rank1.refs == () and len(rank0.refs) >= 3
    assert rank0.aliases == (("lm_head.weight", "model.embed_tokens.weight"),)  # FSDP2 keeps the tie
    one = Learner(sync_config(model_path, actors["out"]), model_path)
    perturb(one)
    want = dict(distinct_state(one.model))
    got = [(n, t) for ref in rank0.refs for n, t in fetch_bucket(ref).items()]
    assert [n for n, _ in got] == list(want)
    for name, t in got:
        assert t.dtype == torch.float32 and torch.equal(t, want[name]), name


@pytest.mark.slow
def test_worker_synced_from_two_ranks_holds_the_single_learners_weights(actors: dict[str, Any]) -> None:
    def scramble(host: Any) -> None:
        with torch.no_grad():
            for p in host.worker.model.parameters():
                p.zero_()

    ray.get(actors["worker"].__ray_call__.remote(scramble))
    push_weights(actors["sharded"], [actors["worker"]], "object_store", 2, timeout_s=120)
    got, want = worker_state(actors["worker"]), single_state(actors)
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    assert ray.get(actors["worker"].policy_version.remote()) == 2


@pytest.mark.slow
def test_sync_bench_reports_every_variant(actors: dict[str, Any]) -> None:
    from rl_div.bench.sync import VARIANTS, measure_sync

    out = measure_sync({"single": actors["single"], "fsdp2": actors["sharded"]}, actors["worker"], repeats=1)
    for name, _, mode in VARIANTS:
        v = out[name]
        assert v["total_s"]["min"] <= v["total_s"]["median"] <= v["total_s"]["max"]
        assert v["learner_s"] > 0 and v["worker_s"] > 0 and v["rss_peak_mb"] >= 0
        assert (v["buckets"] >= 3) if mode == "buckets" else v["buckets"] == 1
    assert {"median_vs_full", "rss_private_vs_full"} <= out["single_buckets"].keys()
    assert "median_vs_single_buckets" in out["fsdp2_n2_buckets"]
