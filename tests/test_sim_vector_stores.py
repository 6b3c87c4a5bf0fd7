"""The simulator's files, vector stores and search, driven through the unmodified SDK over sockets."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from collector.simulator import Simulator
from collector.simulator.core import _encoding
from collector.simulator.corpus import TOPICS, documents
from collector.simulator.search import SearchError, default_max_num_results, search

EMBEDDING_BYTES = 256 * 4


def _expected_chunks(text: str, size: int = 800, overlap: int = 400) -> list[str]:
    """Static chunking recomputed here, independently of the simulator's code."""
    enc = _encoding()
    tokens = enc.encode_ordinary(text)
    out = []
    start = 0
    while True:
        out.append(enc.decode(tokens[start:start + size]))
        if start + size >= len(tokens):
            return out
        start += size - overlap


def _long_doc() -> tuple[str, str]:
    return next(d for d in documents(11, 9) if "_long_" in d[0])


def _upload(client: openai.OpenAI, name: str, text: str) -> str:
    return client.files.create(file=(name, text.encode()), purpose="assistants").id


# ------------------------------------------------------------------------------------------- listing

def test_auto_paging_walks_all_250_stores_newest_first(client: openai.OpenAI) -> None:
    created = [client.vector_stores.create(name=f"store {i}").id for i in range(250)]
    seen = [vs.id for vs in client.vector_stores.list()]
    assert len(seen) == 250
    assert len(set(seen)) == 250
    assert seen == created[::-1]  # default order is desc
    asc = [vs.id for vs in client.vector_stores.list(order="asc", limit=100)]
    assert asc == created


def test_limit_after_before_and_order(client: openai.OpenAI) -> None:
    ids = [client.vector_stores.create(name=f"s{i}").id for i in range(12)]
    first = client.vector_stores.list(limit=5, order="asc")
    assert [v.id for v in first.data] == ids[:5]
    # first_id / last_id are extras on the SDK's page model
    extras = first.model_extra or {}
    assert (extras["first_id"], extras["last_id"], first.has_more) == (ids[0], ids[4], True)
    second = client.vector_stores.list(limit=5, order="asc", after=ids[4])
    assert [v.id for v in second.data] == ids[5:10]
    last = client.vector_stores.list(limit=5, order="asc", after=ids[9])
    assert [v.id for v in last.data] == ids[10:]
    assert last.has_more is False
    before = client.vector_stores.list(limit=3, order="asc", before=ids[6])
    assert [v.id for v in before.data] == ids[3:6]
    desc = client.vector_stores.list(limit=4)
    assert [v.id for v in desc.data] == ids[::-1][:4]
    # a deleted cursor still pages from where it was
    client.vector_stores.delete(ids[4])
    after_deleted = client.vector_stores.list(limit=2, order="asc", after=ids[4])
    assert [v.id for v in after_deleted.data] == ids[5:7]
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "vs_nope"}):
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.list(**bad)
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_list_shape_on_the_wire(sim: Simulator) -> None:
    headers = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=sim.base_url, headers=headers) as http:
        empty = http.get("/vector_stores").json()
        assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        store = http.post("/vector_stores", json={"name": "wire"}).json()
        assert set(store) == {"id", "object", "created_at", "name", "description", "usage_bytes",
                              "file_counts", "status", "expires_after", "expires_at", "last_active_at",
                              "metadata"}
        assert store["file_counts"] == {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0,
                                        "total": 0}
        deleted = http.delete(f"/vector_stores/{store['id']}").json()
        assert deleted == {"id": store["id"], "object": "vector_store.deleted", "deleted": True}


# ------------------------------------------------------------------------------------ files & chunks

def test_files_endpoints(client: openai.OpenAI) -> None:
    f = client.files.create(file=("notes.txt", b"Paris is the capital of France."), purpose="assistants")
    assert (f.object, f.bytes, f.filename, f.purpose, f.status) == ("file", 31, "notes.txt", "assistants",
                                                                     "processed")
    assert f.id.startswith("file-")
    assert client.files.retrieve(f.id).bytes == 31
    assert client.files.content(f.id).content == b"Paris is the capital of France."
    assert [x.id for x in client.files.list(purpose="assistants")] == [f.id]
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.txt", b"x"), purpose="bogus")  # type: ignore[arg-type]


def test_create_and_poll_chunks_and_bills_bytes(sim: Simulator, client: openai.OpenAI) -> None:
    name, text = _long_doc()
    n_tokens = len(_encoding().encode_ordinary(text))
    assert n_tokens > 2000
    vs = client.vector_stores.create(name="kb")
    assert vs.usage_bytes == 0
    file_id = _upload(client, name, text)
    vf = client.vector_stores.files.create_and_poll(file_id=file_id, vector_store_id=vs.id)
    assert vf.status == "completed"
    assert vf.chunking_strategy is not None and vf.chunking_strategy.type == "static"
    assert vf.chunking_strategy.static.max_chunk_size_tokens == 800
    assert vf.chunking_strategy.static.chunk_overlap_tokens == 400
    expected = _expected_chunks(text)
    assert len(expected) == 1 + math.ceil((n_tokens - 800) / 400)
    stored = [c.text for c in client.vector_stores.files.content(vf.id, vector_store_id=vs.id)]
    assert stored == expected
    want_bytes = sum(len(c.encode()) + EMBEDDING_BYTES for c in expected)
    assert vf.usage_bytes == want_bytes
    after = client.vector_stores.retrieve(vs.id)
    assert after.usage_bytes == want_bytes
    assert after.status == "completed"
    assert (after.file_counts.completed, after.file_counts.in_progress, after.file_counts.total) == (1, 0, 1)
    samples = [s for s in sim.ledger.storage if s.vector_store_id == vs.id]
    assert [s.usage_bytes for s in samples] == [want_bytes]

    # a second, short file grows the store by its own bytes
    short_name, short_text = next(d for d in documents(11, 9) if "_short_" in d[0])
    vf2 = client.vector_stores.files.upload_and_poll(vector_store_id=vs.id,
                                                     file=(short_name, short_text.encode()))
    short_bytes = sum(len(c.encode()) + EMBEDDING_BYTES for c in _expected_chunks(short_text))
    assert vf2.usage_bytes == short_bytes
    assert client.vector_stores.retrieve(vs.id).usage_bytes == want_bytes + short_bytes

    # removing the first file bills only the second; deleting the store bills nothing
    assert client.vector_stores.files.delete(vf.id, vector_store_id=vs.id).deleted is True
    assert client.vector_stores.retrieve(vs.id).usage_bytes == short_bytes
    client.vector_stores.delete(vs.id)
    samples = [s.usage_bytes for s in sim.ledger.storage if s.vector_store_id == vs.id]
    assert samples == [want_bytes, want_bytes + short_bytes, short_bytes, 0]
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)


def test_file_is_in_progress_until_processed(sim: Simulator, client: openai.OpenAI) -> None:
    name, text = _long_doc()
    vs = client.vector_stores.create()
    vf = client.vector_stores.files.create(vector_store_id=vs.id, file_id=_upload(client, name, text))
    assert (vf.status, vf.usage_bytes) == ("in_progress", 0)
    raw = client.vector_stores.with_raw_response.retrieve(vs.id)
    assert raw.headers["openai-poll-after-ms"] == "10"
    assert raw.parse().status == "in_progress"
    assert raw.parse().file_counts.in_progress == 1
    assert client.vector_stores.files.poll(vf.id, vector_store_id=vs.id).status == "completed"
    assert client.vector_stores.retrieve(vs.id).status == "completed"


def test_custom_chunking_and_invalid_strategies(client: openai.OpenAI) -> None:
    name, text = _long_doc()
    n_tokens = len(_encoding().encode_ordinary(text))
    file_id = _upload(client, name, text)
    vs = client.vector_stores.create()
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 100}}
    vf = client.vector_stores.files.create_and_poll(file_id=file_id, vector_store_id=vs.id,
                                                    chunking_strategy=strategy)  # type: ignore[arg-type]
    chunks = list(client.vector_stores.files.content(vf.id, vector_store_id=vs.id))
    assert len(chunks) == 1 + math.ceil((n_tokens - 300) / 200)
    assert [c.text for c in chunks] == _expected_chunks(text, 300, 100)
    assert vf.chunking_strategy is not None and vf.chunking_strategy.type == "static"
    assert vf.chunking_strategy.static.max_chunk_size_tokens == 300
    for size, overlap in ((99, 0), (4097, 0), (400, 201)):
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.create(file_ids=[file_id], chunking_strategy={
                "type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}})
        assert err.value.body["param"].startswith("chunking_strategy.static.")  # type: ignore[index]
    assert client.vector_stores.list().data[0].id == vs.id  # nothing was created by the bad requests


def test_errors_unknown_ids_missing_params_and_auth(sim: Simulator, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create()
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("vs_missing")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve("file-missing", vector_store_id=vs.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.create(vector_store_id=vs.id, file_id="file-missing")
    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.files.create(vector_store_id=vs.id, file_id="")
    assert err.value.body["param"] == "file_id"  # type: ignore[index]
    for n in (0, 51):
        with pytest.raises(openai.BadRequestError):
            client.vector_stores.search(vs.id, query="refund", max_num_results=n)
    keyless = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0,
                            default_headers={"Authorization": "Bearer"})
    with pytest.raises(openai.AuthenticationError):
        keyless.vector_stores.list()
    keyless.close()
    with httpx.Client(base_url=sim.base_url) as http:
        resp = http.post("/files", files={"file": ("a.txt", b"a")}, data={"purpose": "assistants"})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "invalid_request_error"


# -------------------------------------------------------------------------------------------- expiry

def test_store_expires_on_the_logical_clock(sim: Simulator, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(expires_after={"anchor": "last_active_at", "days": 1})
    name, text = next(d for d in documents(2, 3) if "_short_" in d[0])
    vf = client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(name, text.encode()))
    active = client.vector_stores.retrieve(vs.id)
    assert active.last_active_at is not None
    assert active.expires_at == active.last_active_at + 86_400
    assert active.status == "completed"
    sim.world.clock.advance(86_400 + 60)
    expired = client.vector_stores.retrieve(vs.id)
    assert expired.status == "expired"
    samples = [s for s in sim.ledger.storage if s.vector_store_id == vs.id]
    assert [s.usage_bytes for s in samples] == [vf.usage_bytes, 0]
    assert samples[-1].at == active.expires_at
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(vs.id, query="anything")
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=vf.id)


# -------------------------------------------------------------------------------------------- search

@pytest.fixture
def kb(client: openai.OpenAI) -> str:
    """A store holding six corpus documents (two long, all five topics; 25-odd chunks)."""
    vs = client.vector_stores.create(name="kb")
    batch = client.vector_stores.file_batches.upload_and_poll(
        vs.id, files=[(n, t.encode()) for n, t in documents(5, 6)])
    assert (batch.status, batch.file_counts.completed, batch.file_counts.total) == ("completed", 6, 6)
    return vs.id


def test_search_is_deterministic_ranked_and_relevant(client: openai.OpenAI, kb: str) -> None:
    query = "refund window for gift cards and store credit"
    first = client.vector_stores.search(kb, query=query, max_num_results=8)
    again = client.vector_stores.search(kb, query=query, max_num_results=8)
    assert [(r.file_id, r.score, r.content[0].text) for r in first] == \
           [(r.file_id, r.score, r.content[0].text) for r in again]
    scores = [r.score for r in first]
    assert len(scores) == 8
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert first.data[0].filename.startswith("refund_policy")


def test_search_counts_honour_threshold_and_max(sim: Simulator, client: openai.OpenAI, kb: str) -> None:
    query = "lost parcels tracking number carrier"
    total_chunks = sum(len(_expected_chunks(t)) for _, t in documents(5, 6))
    assert total_chunks < 50
    everything = search(sim.world, [kb], query, max_num_results=50, score_threshold=0.0)
    assert len(everything) == total_chunks  # every chunk scores above 0
    again = search(sim.world, [kb], query, max_num_results=50, score_threshold=0.0)
    assert again == everything
    for threshold, k in ((0.0, 20), (0.45, 50), (0.45, 3), (0.99, 10)):
        hits = search(sim.world, [kb], query, max_num_results=k, score_threshold=threshold)
        above = [h.score for h in everything if h.score > threshold]
        assert len(hits) == min(k, len(above))
        assert all(h.score > threshold for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    page = client.vector_stores.search(kb, query=query, max_num_results=50,
                                       ranking_options={"score_threshold": 0.45})
    assert [r.score for r in page] == [h.score for h in everything if h.score > 0.45][:50]
    assert search(sim.world, [kb], query, max_num_results=50, score_threshold=0.99) == []
    hit = everything[0]
    assert hit.tokens == len(_encoding().encode_ordinary(hit.text))
    assert hit.vector_store_id == kb


def test_search_filters_on_attributes(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create()
    for i, (name, text) in enumerate(documents(9, 2)):
        fid = _upload(client, name, text)
        client.vector_stores.files.create_and_poll(file_id=fid, vector_store_id=vs.id,
                                                   attributes={"team": "a" if i == 0 else "b", "rank": i})
    only_b = client.vector_stores.search(vs.id, query="policy",
                                         filters={"type": "eq", "key": "team", "value": "b"})
    assert {r.attributes["team"] for r in only_b} == {"b"}  # type: ignore[index]
    both = client.vector_stores.search(vs.id, query="policy", filters={
        "type": "or", "filters": [{"type": "eq", "key": "team", "value": "b"},
                                  {"type": "lt", "key": "rank", "value": 1}]})
    assert {r.attributes["team"] for r in both} == {"a", "b"}  # type: ignore[index]


def test_default_max_num_results() -> None:
    assert default_max_num_results("gpt-4o") == 20
    assert default_max_num_results("gpt-4.1-mini") == 20
    assert default_max_num_results("gpt-3.5-turbo-0125") == 5
    assert default_max_num_results("o3") == 20


def test_corpus_is_deterministic_and_varied() -> None:
    docs = documents(3, 9)
    assert docs == documents(3, 9)
    assert docs != documents(4, 9)
    enc = _encoding()
    sizes = [len(enc.encode_ordinary(t)) for _, t in docs]
    assert min(sizes) < 300
    assert max(sizes) > 2500
    assert {n.split("_")[0] for n, _ in docs} <= {t.split("_")[0] for t in TOPICS}
    assert len({n for n, _ in docs}) == 9


# --------------------------------------------------------------------------------------------- async

async def test_async_upload_poll_and_search(aclient: openai.AsyncOpenAI) -> None:
    vs = await aclient.vector_stores.create(name="async")
    name, text = _long_doc()
    vf = await aclient.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(name, text.encode()))
    assert vf.status == "completed"
    assert vf.usage_bytes == sum(len(c.encode()) + EMBEDDING_BYTES for c in _expected_chunks(text))
    page = await aclient.vector_stores.search(vs.id, query="policy", max_num_results=3)
    assert len(page.data) == 3
    ids = [v.id async for v in aclient.vector_stores.list(limit=1)]
    assert ids == [vs.id]


def test_file_batch_progress_listing_and_cancel(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create()
    file_ids = [_upload(client, n, t) for n, t in documents(8, 3)]
    batch = client.vector_stores.file_batches.create(vs.id, file_ids=file_ids)
    assert (batch.object, batch.status, batch.file_counts.in_progress, batch.file_counts.total) == (
        "vector_store.files_batch", "in_progress", 3, 3)
    listed = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id,
                                                          filter="in_progress")
    assert sorted(f.id for f in listed) == sorted(file_ids)
    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)
    assert (cancelled.status, cancelled.file_counts.cancelled) == ("cancelled", 3)
    store = client.vector_stores.retrieve(vs.id)
    assert (store.status, store.file_counts.cancelled, store.usage_bytes) == ("completed", 3, 0)
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.file_batches.create(vs.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.file_batches.retrieve("vsfb_missing", vector_store_id=vs.id)


def test_search_rejects_bad_filters_and_unknown_stores(sim: Simulator, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create()
    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.search(vs.id, query="x", filters="team=a")  # type: ignore[arg-type]
    assert err.value.body["param"] == "filters"  # type: ignore[index]
    with pytest.raises(SearchError) as missing:
        search(sim.world, ["vs_missing"], "x", max_num_results=5, score_threshold=0.0)
    assert missing.value.status == 404
    assert search(sim.world, [vs.id], "x", max_num_results=5, score_threshold=0.0) == []


def test_processing_completes_on_the_real_clock_too() -> None:
    with Simulator(seed=3, latency="fast") as real:
        c = openai.OpenAI(base_url=real.base_url, api_key="sk-test", max_retries=0)
        vs = c.vector_stores.create()
        name, text = _long_doc()
        vf = c.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(name, text.encode()))
        assert vf.status == "completed"
        assert vf.usage_bytes == sum(len(x.encode()) + EMBEDDING_BYTES for x in _expected_chunks(text))
        c.close()
