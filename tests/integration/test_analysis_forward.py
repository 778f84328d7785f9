"""The forward-pass analyses (loss, activations, lens, similarity, memorization) on a trained run, each
checked against an independent computation: the evaluation rows are rebuilt here from the run's held-out
documents (the spec in workbench/analysis/forward.py), and every statistic is recomputed from full
activations of `Checkpoint.to_hf()` (transformers' LlamaForCausalLM, eager attention) with numpy/torch
formulas written below, not with the analysis code.

The run is analysed once per module (in-process, `workers=0`) on a copy of the session's trained run; the
tests read that copy and never write to it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import workbench
from workbench.analysis import analyze
from workbench.errors import MissingData

STEPS = (0, 30)  # analysed steps: 0 is the first checkpoint (cka_prev NaN, nothing seen yet)
MEMO_STEPS = (0, 15, 30)  # memorization also halfway, where only some sequences were seen yet
FORWARD = ["loss", "activations", "lens", "similarity", "memorization"]
CKA_TOKENS = 64
SAMPLE = 16  # sampled training sequences of memorization (default 64; fewer keeps the file fast)
EOS = "<|endoftext|>"


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def run(_trained, tmp_path_factory):
    """A copy of the trained run with every forward analysis computed at STEPS (in-process)."""
    path = shutil.copytree(_trained, tmp_path_factory.mktemp("forward") / "run")
    r = workbench.open(path)
    done = analyze(r, FORWARD[:-1], steps=list(STEPS), workers=0, progress=False,
                   params={"similarity": {"tokens": CKA_TOKENS}})
    assert done == {name: list(STEPS) for name in FORWARD[:-1]}
    done = analyze(r, ["memorization"], steps=list(MEMO_STEPS), workers=0, progress=False,
                   params={"memorization": {"sample": SAMPLE}})
    assert done == {"memorization": list(MEMO_STEPS)}
    r.refresh()
    return r


@pytest.fixture(scope="module")
def rows(run):
    """{domain: [row, ...]}: the evaluation rows rebuilt from the spec (domains sorted)."""
    return eval_rows(run, run.train_config["seq_len"])


@pytest.fixture(scope="module")
def ref(run, rows):
    """`ref(step)`: full activations of every evaluation row through transformers' model (cached)."""
    cache: dict[int, dict] = {}
    ids = torch.tensor([r for d in sorted(rows) for r in rows[d]], dtype=torch.int64)

    def get(step: int) -> dict:
        if step not in cache:
            cache[step] = hf_activations(hf_model(run, step), ids)
        return cache[step]

    return get


def eval_rows(run, length: int) -> dict[str, list[list[int]]]:
    """Per domain, the held-out documents in stored order, each followed by EOS, laid end to end and cut
    into rows of length + 1 tokens overlapping by one; a shorter last row dropped unless it is the only one."""
    docs = run.documents()
    docs = docs[docs["split"] == "heldout"]
    eos = run.tokenizer.token_to_id(EOS)
    assert eos is not None
    encs = run.tokenizer.encode_batch(list(docs["text"]), add_special_tokens=False)
    streams: dict[str, list[int]] = {}
    for enc, domain in zip(encs, docs["domain"]):
        streams.setdefault(domain, []).extend(list(enc.ids) + [eos])
    out = {}
    for domain in sorted(streams):
        s = streams[domain]
        n = (len(s) - 1) // length
        out[domain] = [s[i * length: (i + 1) * length + 1] for i in range(n)] if n else [s]
    return out


def hf_model(run, step: int):
    model = run.checkpoint(step).to_hf(dtype=torch.float32)
    assert model.config._attn_implementation == "eager"
    return model


def hf_activations(model, rows: torch.Tensor) -> dict:
    """One pass of transformers' model over `rows` [R, length + 1] (inputs row[:-1]): logits, each block's
    output, the MLP activation function's input and the attention patterns, all float64 numpy."""
    layers = model.model.layers
    assert len({id(b.mlp.act_fn) for b in layers}) == len(layers)  # one act_fn module per block
    resid, pre, handles = {}, {}, []
    for l, block in enumerate(layers):
        handles.append(block.register_forward_hook(
            lambda m, a, out, l=l: resid.__setitem__(l, (out[0] if isinstance(out, tuple) else out).detach())))
        handles.append(block.mlp.act_fn.register_forward_pre_hook(
            lambda m, args, l=l: pre.__setitem__(l, args[0].detach())))
    try:
        with torch.no_grad():
            out = model(input_ids=rows[:, :-1], output_attentions=True, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    L = len(layers)
    # hidden_states[l + 1] is block l's output, except the last entry (after the final norm).
    for l in range(L - 1):
        torch.testing.assert_close(out.hidden_states[l + 1], resid[l], rtol=0, atol=0)
    with torch.no_grad():
        lens = [model.lm_head(model.model.norm(out.hidden_states[l + 1])) for l in range(L - 1)]
        lens.append(model.lm_head(model.model.norm(resid[L - 1])))
    torch.testing.assert_close(lens[-1], out.logits)
    f64 = lambda t: t.double().numpy()  # noqa: E731
    return {"logits": f64(out.logits), "targets": rows[:, 1:].numpy(),
            "resid": [f64(resid[l]) for l in range(L)], "pre": [f64(pre[l]) for l in range(L)],
            "attn": [f64(a) for a in out.attentions], "lens": [f64(x) for x in lens]}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    lp = log_softmax(logits)
    return -np.take_along_axis(lp, targets[..., None], -1)[..., 0]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space linear CKA of [token, feature] matrices, float64."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


# ------------------------------------------------------------------------------------------ loss

def test_loss_per_domain_and_per_token_equal_transformers_cross_entropy(run, rows, ref):
    ds = run.results("loss").load()
    domains = sorted(rows)
    assert ds["domain"].values.tolist() == domains
    assert ds["step"].values.tolist() == list(STEPS)
    # Per-token coordinates, from the rebuilt rows alone.
    length = run.train_config["seq_len"]
    targets = np.concatenate([np.array(r[1:]) for d in domains for r in rows[d]])
    token_domain = [d for d in domains for r in rows[d] for _ in r[1:]]
    positions = np.concatenate([np.arange(len(r) - 1) for d in domains for r in rows[d]])
    np.testing.assert_array_equal(ds["target"].values, targets)
    assert ds["token_domain"].values.tolist() == token_domain
    np.testing.assert_array_equal(ds["token_position"].values, positions)
    assert positions.max() == length - 1
    counts = [sum(len(r) - 1 for r in rows[d]) for d in domains]
    np.testing.assert_array_equal(ds["tokens"].values, [counts] * len(STEPS))

    per_domain = np.array(token_domain)
    for step in STEPS:
        a = ref(step)
        ce = cross_entropy(a["logits"], a["targets"]).reshape(-1)  # float64, rows in domain order
        one = ds.sel(step=step)
        assert one["token_loss"].dtype == np.float32
        np.testing.assert_allclose(one["token_loss"].values, ce, rtol=1e-5, atol=2e-6)  # stored as float32
        expect = [ce[per_domain == d].mean() for d in domains]
        np.testing.assert_allclose(one["loss"].values, expect, rtol=1e-5)
        np.testing.assert_allclose(one["perplexity"].values, np.exp(one["loss"].values), rtol=1e-12)
    # Training lowers the held-out loss (a sanity check on the data, not on the analysis).
    assert (ds["loss"].sel(step=30) < ds["loss"].sel(step=0)).all()


# ------------------------------------------------------------------------------------------ activations

def expected_activations(a: dict, massive_k: int = 4, rare_below: float = 0.01) -> dict[str, np.ndarray]:
    """Every `activations` statistic from full activations, written out directly."""
    out: dict[str, list] = {k: [] for k in ("resid_norm", "resid_kurtosis", "massive_value", "massive_dim",
                                            "massive_token", "massive_position", "massive_ratio", "fire_rate",
                                            "dead_units", "rare_units", "attn_entropy", "sink_mass")}
    for l, resid in enumerate(a["resid"]):
        rows, length, d = resid.shape
        x = resid.reshape(-1, d)  # token index = row * length + position (rows in evaluation order)
        out["resid_norm"].append(np.sqrt((x ** 2).sum(-1)).mean())
        s2 = (x ** 2).mean(0)  # per-dimension mean square
        out["resid_kurtosis"].append((s2 ** 2).sum() / d / (s2.sum() / d) ** 2)
        flat = np.abs(x).reshape(-1)
        top = np.argsort(-flat, kind="stable")[:massive_k]
        token, dim = np.unravel_index(top, x.shape)
        out["massive_value"].append(x[token, dim])
        out["massive_dim"].append(dim)
        out["massive_token"].append(token)
        out["massive_position"].append(token % length)
        out["massive_ratio"].append(np.abs(x[token, dim]) / np.abs(x).mean())
        rate = (a["pre"][l].reshape(-1, a["pre"][l].shape[-1]) > 0).mean(0)  # per MLP unit
        out["fire_rate"].append(rate.mean())
        out["dead_units"].append((rate == 0).mean())
        out["rare_units"].append((rate < rare_below).mean())
        p = a["attn"][l][:, :, 1:, :]  # [row, head, query >= 1, key]
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1)  # [row, head, query]
        out["attn_entropy"].append(ent.mean((0, 2)))
        out["sink_mass"].append(p[..., 0].mean((0, 2)))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("step", [0, 30])
def test_activation_statistics_equal_direct_computations(run, ref, step):
    ds = run.results("activations").load().sel(step=step)
    a = ref(step)
    want = expected_activations(a)
    n_layers, heads = len(a["resid"]), a["attn"][0].shape[1]
    assert ds.sizes["layer"] == n_layers and ds.sizes["rank"] == 4 and ds.sizes["head"] == heads
    for name in ("resid_norm", "resid_kurtosis", "massive_value", "massive_ratio", "attn_entropy", "sink_mass"):
        np.testing.assert_allclose(ds[name].values, want[name], rtol=1e-6, err_msg=name)
    for name in ("massive_dim", "massive_token", "massive_position"):
        np.testing.assert_array_equal(ds[name].values, want[name], err_msg=name)
    # Firing is `pre > 0`: a pre-activation within float32 noise of 0 may flip between the in-repo model and
    # transformers' (none does here); allow one token's worth.
    n_tokens = a["pre"][0].shape[0] * a["pre"][0].shape[1]
    for name in ("fire_rate", "dead_units", "rare_units"):
        np.testing.assert_allclose(ds[name].values, want[name], rtol=0, atol=1 / n_tokens, err_msg=name)
    # The statistics say something: attention rows sum to one, a sink share is a share.
    assert ((ds["sink_mass"] > 0) & (ds["sink_mass"] <= 1)).all()
    assert (ds["attn_entropy"] >= 0).all() and (ds["resid_kurtosis"] >= 1).all()


def test_layer_stats_merge_over_partitions_in_any_order(run, rows, ref):
    from workbench.analysis import forward
    from workbench.analyses.activations import Activations, LayerStats

    a = ref(30)
    ids = torch.tensor([r for d in sorted(rows) for r in rows[d]], dtype=torch.int64)
    batches, first, size = [], 0, 8
    for i in range(0, len(ids), size):  # batch boundaries need not follow the domains here
        part = ids[i: i + size]
        batches.append(forward.Batch(part[:, :-1], part[:, 1:], "all", first))
        first += part[:, :-1].numel()
    hooks = {"hook_resid_post": "resid", "mlp.hook_pre": "pre", "attn.hook_pattern": "attn"}
    n_layers = len(a["resid"])

    def fed(which: list[int]) -> list[LayerStats]:
        layers = [LayerStats(massive_k=4) for _ in range(n_layers)]
        for j in which:
            b = batches[j]
            i = b.first // b.ids.shape[1]
            for l, s in enumerate(layers):
                for hook, key in hooks.items():
                    s.update(hook, torch.from_numpy(a[key][l][i: i + b.ids.shape[0]]).float(), b.first)
        return layers

    def merged(*parts: list[int]) -> xr.Dataset:
        stats = [fed(p) for p in parts]
        layers = [s for s in stats[0]]
        for other in stats[1:]:
            layers = [s.merge(o) for s, o in zip(layers, other)]
        return Activations().dataset(layers, batches)

    every = list(range(len(batches)))
    half = len(batches) // 2
    whole = Activations().dataset(fed(every), batches)
    xr.testing.assert_allclose(merged(every[:half], every[half:]), whole)
    xr.testing.assert_allclose(merged(every[half:], every[:half]), whole)
    xr.testing.assert_allclose(merged(every[1::3], every[::3], every[2::3]), whole)
    xr.testing.assert_allclose(merged(every[::-1]), whole)  # batches fed in reverse order
    # ... and it is what the analysis stored for that step (up to the two models' float32 differences).
    stored = run.results("activations").load().sel(step=30, drop=True)
    xr.testing.assert_allclose(whole.drop_vars(["fire_rate", "dead_units", "rare_units"]),
                               stored.drop_vars(["fire_rate", "dead_units", "rare_units"]), rtol=1e-6)


# ------------------------------------------------------------------------------------------ lens

@pytest.mark.parametrize("step", [0, 30])
def test_logit_lens_equals_final_norm_and_unembedding_of_each_block(run, ref, step):
    ds = run.results("lens").load().sel(step=step)
    a = ref(step)
    final = log_softmax(a["logits"]).reshape(-1, a["logits"].shape[-1])
    kl, agree = [], []
    for lens in a["lens"]:
        lp = log_softmax(lens).reshape(final.shape)
        kl.append((np.exp(final) * (final - lp)).sum(-1).mean())
        agree.append((lp.argmax(-1) == final.argmax(-1)).mean())
    assert ds["layer"].values.tolist() == list(range(len(a["lens"])))
    np.testing.assert_allclose(ds["kl"].values, kl, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds["top1_agreement"].values, agree, rtol=0, atol=1 / final.shape[0])  # one near-tie
    assert abs(ds["kl"].values[-1]) < 1e-6 and ds["top1_agreement"].values[-1] == 1.0
    assert ds["kl"].values[0] > 10 * abs(ds["kl"].values[-1])  # an earlier layer's lens is not the output


# ------------------------------------------------------------------------------------------ similarity

def cka_tokens(rows: dict[str, list[list[int]]], tokens: int) -> list[list[int]]:
    """The rows similarity reads: one row per domain in turn (domains sorted) until `tokens` inputs."""
    out, n, i = [], 0, 0
    queues = [rows[d] for d in sorted(rows)]
    while n < tokens and any(i < len(q) for q in queues):
        for q in queues:
            if i < len(q) and n < tokens:
                out.append(q[i])
                n += len(q[i]) - 1
        i += 1
    return out


def test_cka_between_layers_and_with_the_previous_checkpoint(run, rows):
    ds = run.results("similarity").load()
    sample = cka_tokens(rows, CKA_TOKENS)
    assert len(sample) == 2 and len({tuple(r) for r in sample}) == 2  # code row 0, then en row 0
    ids = torch.tensor(sample, dtype=torch.int64)
    reps = {}

    def resid(step: int) -> list[np.ndarray]:
        if step not in reps:
            acts = hf_activations(hf_model(run, step), ids)["resid"]
            reps[step] = [x.reshape(-1, x.shape[-1])[:CKA_TOKENS] for x in acts]
        return reps[step]

    for step in STEPS:
        one = ds.sel(step=step)
        xs = resid(step)
        n = len(xs)
        want = np.array([[linear_cka(xs[i], xs[j]) for j in range(n)] for i in range(n)])
        cka = one["cka"].values
        np.testing.assert_allclose(cka, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cka, cka.T, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.diag(cka), 1.0, rtol=0, atol=1e-12)
        i = run.steps.index(step)
        if i == 0:
            assert np.isnan(one["cka_prev"].values).all() and int(one["prev_step"]) == -1
        else:
            prev = run.steps[i - 1]  # the previous checkpoint, not the previous analysed step
            assert int(one["prev_step"]) == prev
            want_prev = [linear_cka(x, y) for x, y in zip(xs, resid(prev))]
            np.testing.assert_allclose(one["cka_prev"].values, want_prev, rtol=1e-5, atol=1e-6)
            assert (one["cka_prev"].values < 1 - 1e-6).all()  # the checkpoints differ


# ------------------------------------------------------------------------------------------ memorization

@pytest.fixture(scope="module")
def training(run):
    """(documents indexed by document_id, {step: the pieces of its batch}) of the trained run."""
    steps = sorted(int(s) for s in run.table("data/order")["step"].unique())
    return run.documents().set_index("document_id"), {s: run.batch(s) for s in steps}


def canary_sequence(run, text: str, canary_text: str, prefix: int, length: int):
    """(prompt, target, (first, end) token span of the secret) of a canary in one document's `text`."""
    enc = run.tokenizer.encode(text, add_special_tokens=False)
    secret = canary_text.split(" ")[-1]
    start = text.index(canary_text) + len(canary_text) - len(secret)
    end = start + len(secret)
    toks = [i for i, (s, e) in enumerate(enc.offsets) if s < end and e > start]  # tokens touching the secret
    a, b = toks[0], toks[-1] + 1
    return enc.ids[max(0, a - prefix): a], enc.ids[a: min(b, a + length)], (a, b)


def canary_spans(run, docs, canary: dict) -> list[tuple[int, int, int]]:
    """(document_id, first, end) of the secret in every document that carries the canary."""
    out = []
    for doc in json.loads(canary["document_ids"]):
        if canary["text"] in docs.loc[doc, "text"]:
            _, _, (a, b) = canary_sequence(run, docs.loc[doc, "text"], canary["text"], 1, 1)
            out.append((doc, a, b))
    return out


def seen_steps(batches: dict[int, list[dict]], spans, upto: int) -> list[int]:
    """Training steps <= upto whose batch held a piece overlapping one of `spans` (each step once)."""
    return [s for s, pieces in sorted(batches.items()) if s <= upto and any(
        p["document_id"] == doc and p["offset"] < b and p["offset"] + p["length"] > a
        for p in pieces for doc, a, b in spans)]


def test_memorization_sequences_greedy_continuations_and_exposure_counts(run, training):
    docs, batches = training
    ds = run.results("memorization").load()
    canaries = run.table("data/canaries").to_dict("records")
    kinds = ds["kind"].values.tolist()
    n_canaries = kinds.count("canary")
    assert kinds == ["canary"] * n_canaries + ["sample"] * (len(kinds) - n_canaries)  # canaries first
    assert 0 < n_canaries <= len(canaries)
    by_id = {str(c["id"]): c for c in canaries}
    for i in range(n_canaries):
        c = by_id[ds["canary"].values[i]]
        assert ds["copies"].values[i] == c["copies"] == len(canary_spans(run, docs, c))
        assert ds["document_id"].values[i] in json.loads(c["document_ids"])
    samples = ds["document_id"].values[n_canaries:]
    assert len(samples) == SAMPLE and len(set(samples)) == SAMPLE and list(samples) == sorted(samples)
    assert (docs.loc[samples, "split"] == "train").all() and (ds["copies"].values[n_canaries:] == 1).all()
    assert all(len(run.tokenizer.encode(t, add_special_tokens=False).ids) >= 64 for t in docs.loc[samples, "text"])

    # Every sequence's exposures, from its target span(s) and the recorded batches.
    for i, kind in enumerate(kinds):
        doc = int(ds["document_id"].values[i])
        spans = canary_spans(run, docs, by_id[ds["canary"].values[i]]) if kind == "canary" else [(doc, 32, 64)]
        for step in MEMO_STEPS:
            seen = seen_steps(batches, spans, step)
            one = ds.sel(step=step)
            assert one["times_seen"].values[i] == len(seen), (step, i, seen)
            since = one["steps_since_seen"].values[i]
            assert since == step - seen[-1] if seen else np.isnan(since), (step, i, seen)
    assert (ds["times_seen"].sel(step=0) == 0).all()  # batch 1 is the first trained on
    assert (ds["times_seen"].sel(step=30) > 0).any()

    # A few sequences of each kind, rebuilt from their document: greedy continuations from transformers.
    picks = [0, n_canaries - 1, n_canaries, n_canaries + 1, len(kinds) - 1]
    seqs = {}
    for i in picks:
        text = docs.loc[int(ds["document_id"].values[i]), "text"]
        if kinds[i] == "canary":
            prompt, target, _ = canary_sequence(run, text, by_id[ds["canary"].values[i]]["text"], 32, 32)
        else:
            ids = run.tokenizer.encode(text, add_special_tokens=False).ids
            prompt, target = ids[:32], ids[32:64]
        seqs[i] = (prompt, target)
    for step in MEMO_STEPS:
        one = ds.sel(step=step)
        model = hf_model(run, step)
        model.generation_config.eos_token_id = None  # greedy to the full length, through any EOS
        for i, (prompt, target) in seqs.items():
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=len(target),
                                     attention_mask=torch.ones(1, len(prompt), dtype=torch.int64))
            cont = out[0, len(prompt):].numpy()
            assert len(cont) == len(target)
            match = cont == np.array(target)
            assert one["exact_match"].values[i] == float(match.all()), (step, i)
            np.testing.assert_allclose(one["token_match"].values[i], match.mean(), rtol=0, atol=1e-12)


def test_times_seen_counts_a_batch_once_when_it_holds_several_copies(run, training, monkeypatch):
    """A batch holding two pieces of a target (two copies of a canary, or a span cut across two rows of one
    batch) is one exposure: `times_seen` counts batches, as documented, not pieces."""
    from workbench.analyses import memorization
    from workbench.analysis import StepContext, WorkerState

    docs, batches = training
    # Find, in the recorded data order, a document with two pieces in one batch and a canary with two
    # documents in one batch; targets spanning those pieces are seen twice by that batch.
    pieces: dict[tuple[int, int], list[dict]] = {}
    for s, ps in batches.items():
        for p in ps:
            pieces.setdefault((s, p["document_id"]), []).append(p)
    canary = next(c for c in run.table("data/canaries").to_dict("records")
                  if any(sum(p["document_id"] in json.loads(c["document_ids"]) for p in ps) > 1
                         for ps in batches.values()))
    carriers = [d for d in json.loads(canary["document_ids"]) if canary["text"] in docs.loc[d, "text"]]
    ids = run.tokenizer.encode(docs.loc[carriers[0], "text"], add_special_tokens=False).ids
    seqs = [memorization.Sequence("canary", carriers[0], str(canary["id"]), len(carriers), tuple(ids[:4]),
                                  tuple(ids[4:6]), tuple((d, 0, 10**6) for d in carriers))]  # every token of every copy
    # a document cut across two rows of one batch, when this corpus' order has one
    twice = next(((s, doc, ps) for (s, doc), ps in sorted(pieces.items()) if len(ps) > 1), None)
    if twice is not None:
        doc_a, (p, q) = twice[1], sorted(twice[2], key=lambda p: p["offset"])[:2]
        seqs.append(memorization.Sequence("sample", doc_a, "", 1, tuple(ids[:4]), tuple(ids[4:6]),
                                          ((doc_a, p["offset"], q["offset"] + q["length"]),)))
    monkeypatch.setattr(memorization, "sequences", lambda run, params: seqs)
    ctx = StepContext(run, 30, tuple(run.steps), WorkerState())
    ds = memorization.Memorization().compute(ctx)
    for i, s in enumerate(seqs):
        seen = seen_steps(batches, s.spans, 30)
        hits = sum(p["document_id"] == doc and p["offset"] < b and p["offset"] + p["length"] > a
                   for ps in batches.values() for p in ps for doc, a, b in s.spans)
        assert hits > len(seen)  # some batch holds two pieces of this target: the case under test
        assert ds["times_seen"].values[i] == len(seen), (s.kind, seen)
        assert ds["steps_since_seen"].values[i] == 30 - seen[-1]


def test_memorization_needs_a_corpus_and_is_skipped_when_not_asked_for(run, tmp_path, caplog):
    path = tmp_path / "no-corpus"
    writer = workbench.create(path, model_config=run.model_config, tokenizer=run.tokenizer)
    writer.write_checkpoint(30, run.checkpoint(30).state_dict())
    data = tmp_path / "eval.txt"
    heldout = run.documents().query("split == 'heldout'")["text"].head(3)
    data.write_text("\n".join(t.replace("\n", " ") for t in heldout) + "\n")
    with pytest.raises(MissingData, match="corpus"):
        analyze(path, ["memorization"], eval_data=data, workers=0, progress=False)
    with caplog.at_level("WARNING", logger="workbench.analysis.plan"):
        done = analyze(path, eval_data=data, workers=0, progress=False)
    assert "skipping memorization" in caplog.text
    assert done == {"activations": [30], "lens": [30], "loss": [30], "similarity": [30], "weights": [30]}
    other = workbench.open(path)
    assert other.results("loss")["domain"].values.tolist() == ["all"]
    assert np.isfinite(other.results("loss")["loss"].values).all()


# ------------------------------------------------------------------------------------------ Dask

def test_two_worker_processes_give_the_in_process_results(run, _trained, tmp_path):
    copy = workbench.open(shutil.copytree(_trained, tmp_path / "copy"))  # no results yet
    names = ["loss", "activations"]
    done = analyze(copy, names, steps=list(STEPS), workers=2, progress=False)
    assert done == {"loss": list(STEPS), "activations": list(STEPS)}
    copy.refresh()
    for name in names:
        xr.testing.assert_allclose(copy.results(name), run.results(name), rtol=1e-6)


def test_wb_results_plots_the_memorisation_heatmap_and_summaries(run, tmp_path):
    from tests.conftest import wb
    from workbench.figures import results_figure

    ds = run.results("memorization").load()
    fig = results_figure("memorization", ds)
    df = ds["token_match"].to_dataframe().reset_index()
    df = df[df["kind"] == "canary"]
    want = df.groupby(["copies", "step"])["token_match"].mean().unstack("step")  # copies × step, sorted
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), want.values)
    assert list(fig.data[0].y) == [str(c) for c in want.index]
    for name in ("loss", "memorization"):
        out = tmp_path / f"{name}.html"
        code, output = wb("results", run.location, name, "--plot", out)
        assert code == 0, output
        assert out.stat().st_size > 1000 and "plotly" in out.read_text()[:100000].lower()
