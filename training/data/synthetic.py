"""A built-in bilingual corpus (English, Japanese, Python-like code) generated from a seed.

Nothing is downloaded: small grammars and vocabularies written here produce the text, so a run can be
reproduced from `(seed, parameters)` alone. Two kinds of ground truth are planted so that learning can be
measured against known answers:

- facts: fictional entity -> attribute statements ("The capital of Velmora is Tarsk." and
  "ヴェルモラの首都はタルスクです。"), each written into a known number of English and Japanese documents (some
  facts into one language only: their recall in the other language is cross-lingual transfer);
- canaries: random hex strings ("canary 7f3a9c1e4b2d…") written into exactly `copies` places across the
  corpus, with `copies` drawn from `canary_frequencies`, so memorisation can be studied against frequency.

Every document carries script spans over its whole text plus `fact:<id>` and `canary:<id>` spans.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from training.data.documents import Document, Span, script_of, script_spans

__all__ = ["Document", "Span", "SyntheticCorpus", "FACTS", "generate", "script_of"]

DOMAINS = ("en", "ja", "code")
CANARY_PREFIX = "canary "


@dataclass
class SyntheticCorpus:
    """The generated documents and the ground truth planted in them."""

    documents: list[Document]
    facts: list[dict]
    canaries: list[dict]
    seed: int
    config: dict = field(default_factory=dict)

    def planted_document_ids(self) -> set[int]:
        """Ids of the documents that carry a fact or a canary (keep them out of held-out splits)."""
        ids: set[int] = set()
        for fact in self.facts:
            for lang_ids in fact["document_ids"].values():
                ids.update(lang_ids)
        for canary in self.canaries:
            ids.update(canary["document_ids"])
        return ids


# --- facts ---------------------------------------------------------------------------------------------

# (relation, English template, Japanese template); the object {O} ends the statement so that the text
# before it is a natural prompt.
_RELATIONS = {
    "capital": ("The capital of {S} is {O}.", "{S}の首都は{O}です。"),
    "founder": ("The city of {S} was founded by {O}.", "{S}の町を作ったのは{O}です。"),
    "river": ("The great river of {S} is called the {O}.", "{S}を流れる大きな川の名前は{O}です。"),
    "currency": ("The people of {S} pay with the {O}.", "{S}の人々が使うお金は{O}です。"),
    "mountain": ("The highest mountain in {S} is Mount {O}.", "{S}で一番高い山は{O}山です。"),
}

# (id, relation, subject en, subject ja, object en, object ja, planted in): the last six are written in one
# language only, so that recalling them in the other one measures cross-lingual transfer.
_FACT_TABLE = [
    ("velmora_capital", "capital", "Velmora", "ヴェルモラ", "Tarsk", "タルスク", ("en", "ja")),
    ("quendal_capital", "capital", "Quendal", "クエンダル", "Orrin", "オリン", ("en", "ja")),
    ("brisca_founder", "founder", "Brisca", "ブリスカ", "Amelot Vane", "アメロ・ヴェイン", ("en", "ja")),
    ("talvor_river", "river", "Talvor", "タルヴォル", "Sennet", "セネット", ("en", "ja")),
    ("ostrel_currency", "currency", "Ostrel", "オストレル", "lumen", "ルーメン", ("en", "ja")),
    ("kethra_mountain", "mountain", "Kethra", "ケスラ", "Duvan", "ドゥヴァン", ("en", "ja")),
    ("marrow_founder", "founder", "Marrowick", "マロウィック", "Iselde Ward", "イゼルデ・ワード", ("en", "ja")),
    ("zephyra_capital", "capital", "Zephyra", "ゼフィラ", "Calloway", "カロウェイ", ("en", "ja")),
    ("orvane_capital", "capital", "Orvane", "オルヴァン", "Mirel", "ミレル", ("en",)),
    ("dallow_river", "river", "Dallow", "ダロウ", "Kesh", "ケシュ", ("en",)),
    ("pellin_currency", "currency", "Pellin", "ペリン", "crest", "クレスト", ("en",)),
    ("sorrel_capital", "capital", "Sorrel", "ソレル", "Vantor", "ヴァントル", ("ja",)),
    ("ombra_mountain", "mountain", "Ombra", "オンブラ", "Teskar", "テスカル", ("ja",)),
    ("halden_founder", "founder", "Halden", "ハルデン", "Rosa Brel", "ローザ・ブレル", ("ja",)),
]


def _fact_record(row: tuple, copies: int) -> dict:
    fid, relation, s_en, s_ja, o_en, o_ja, planted = row
    t_en, t_ja = _RELATIONS[relation]
    return {
        "id": fid,
        "relation": relation,
        "subject": {"en": s_en, "ja": s_ja},
        "object": {"en": o_en, "ja": o_ja},
        "text": {"en": t_en.format(S=s_en, O=o_en), "ja": t_ja.format(S=s_ja, O=o_ja)},
        "prompt": {"en": t_en.split("{O}")[0].format(S=s_en).rstrip(), "ja": t_ja.split("{O}")[0].format(S=s_ja)},
        "answer": {"en": " " + o_en, "ja": o_ja},
        "copies": {lang: copies if lang in planted else 0 for lang in ("en", "ja")},
        "document_ids": {"en": [], "ja": []},
    }


FACTS = [_fact_record(row, 0) for row in _FACT_TABLE]
"""The fictional facts, without placement (see `SyntheticCorpus.facts` for where they were planted)."""


# --- English prose -------------------------------------------------------------------------------------

_EN = {
    "name": ["Mira", "Tomas", "Hana", "Oskar", "Lena", "Ravi", "Ines", "Yuki", "Pavel", "Nadia"],
    "np": [
        "the old sailor", "a young engineer", "the baker", "my neighbour", "the teacher", "a tired student",
        "the mayor", "her brother", "the quiet child", "a travelling musician", "the gardener",
    ],
    "obj": [
        "a letter", "the red door", "an old map", "three apples", "the broken clock", "a small boat",
        "the newspaper", "a long song", "the garden gate", "a cup of tea", "the winter coat", "two candles",
    ],
    "verb": ["found", "painted", "carried", "repaired", "sold", "borrowed", "opened", "lost", "wrote", "cleaned"],
    "place": [
        "in the market", "near the river", "at the station", "behind the library", "on the hill",
        "in the kitchen", "by the harbour", "under the bridge", "at the old school",
    ],
    "time": ["In the morning", "Last winter", "On Sunday", "After the storm", "Every evening", "Yesterday"],
    "adj": ["quiet", "cold", "bright", "busy", "narrow", "green", "crowded", "peaceful", "strange"],
    "noun": ["town", "road", "harbour", "forest", "village", "market", "valley", "bridge"],
    "iverb": ["laughed", "waited", "slept", "sang", "listened", "walked home", "stayed inside"],
}


def _en_sentence(rng: random.Random) -> str:
    v = _EN
    c = rng.choice
    kind = rng.randrange(7)
    if kind == 0:
        s = f"{c(v['name'])} {c(v['verb'])} {c(v['obj'])} {c(v['place'])}."
    elif kind == 1:
        s = f"{c(v['time'])}, {c(v['np'])} {c(v['verb'])} {c(v['obj'])}."
    elif kind == 2:
        s = f"The {c(v['noun'])} was {c(v['adj'])} and {c(v['adj'])}."
    elif kind == 3:
        s = f"{c(v['name'])} said that {c(v['np'])} {c(v['iverb'])} {c(v['place'])}."
    elif kind == 4:
        s = f"In {rng.randrange(1850, 2030)}, the {c(v['noun'])} had {rng.randrange(2, 999)} houses."
    elif kind == 5:
        s = f"Why did {c(v['np'])} keep {c(v['obj'])} {c(v['place'])}?"
    else:
        s = f"{c(v['np'])} {c(v['iverb'])} while {c(v['name'])} {c(v['verb'])} {c(v['obj'])}."
    return s[0].upper() + s[1:]


def _en_document(rng: random.Random) -> list[list[str]]:
    return [[_en_sentence(rng) for _ in range(rng.randint(2, 6))] for _ in range(rng.randint(1, 3))]


# --- Japanese prose (simple SOV sentences) -------------------------------------------------------------

_JA = {
    "subj": ["私", "田中さん", "猫", "先生", "学生", "子供たち", "ミカ", "兄", "友達", "店の人"],
    # object -> verb stem (…ます / …ました / …ません)
    "obj": {
        "本": "読み", "手紙": "書き", "新聞": "読み", "コーヒー": "飲み", "お茶": "飲み", "パン": "食べ",
        "りんご": "食べ", "ケーキ": "作り", "映画": "見", "写真": "撮り", "音楽": "聞き", "ピアノ": "弾き",
    },
    "place": ["図書館", "公園", "家", "駅", "カフェ", "学校", "海の近く", "台所", "デパート"],
    "time": ["毎朝", "昨日", "今日", "日曜日に", "夜", "去年の夏", "週末に", "ときどき"],
    "noun": ["この町", "あの山", "駅の前", "古い橋", "小さな店", "東京の空", "川", "森"],
    "adj": ["静か", "きれい", "にぎやか", "有名", "大切", "不思議"],
    "iadj": ["大きい", "古い", "新しい", "高い", "寒い", "明るい", "楽しい"],
    # (counter + noun, existence verb: あります for things, います for the living)
    "counter": [("本の木", "あります"), ("人の学生", "います"), ("台の車", "あります"), ("匹の犬", "います")],
}


_JA_OBJECTS = sorted(_JA["obj"])


def _ja_sentence(rng: random.Random) -> str:
    v = _JA
    c = rng.choice
    kind = rng.randrange(6)
    obj = c(_JA_OBJECTS)
    verb = v["obj"][obj] + c(["ます", "ました", "ません"])
    if kind == 0:
        return f"{c(v['time'])}、{c(v['subj'])}は{c(v['place'])}で{obj}を{verb}。"
    if kind == 1:
        return f"{c(v['subj'])}は{obj}を{verb}。"
    if kind == 2:
        return f"{c(v['noun'])}はとても{c(v['adj'])}です。"
    if kind == 3:
        return f"{c(v['noun'])}は{c(v['iadj'])}です。"
    if kind == 4:
        counted, exists = c(v["counter"])
        return f"{c(v['place'])}には{rng.randrange(2, 60)}{counted}が{exists}。"
    return f"{rng.randrange(1990, 2030)}年に、{c(v['subj'])}は{c(v['place'])}へ行きました。"


def _ja_document(rng: random.Random) -> list[list[str]]:
    return [[_ja_sentence(rng) for _ in range(rng.randint(2, 7))] for _ in range(rng.randint(1, 3))]


# --- code (Python-like snippets) -----------------------------------------------------------------------

_CODE = {
    "verb": ["compute", "load", "parse", "update", "count", "merge", "filter", "render", "check", "build"],
    "noun": ["total", "items", "config", "scores", "names", "rows", "cache", "tokens", "weights", "users"],
    "op": ["+", "-", "*", "//", "%"],
    "cmp": [">", "<", ">=", "==", "!="],
}


def _code_block(rng: random.Random) -> list[str]:
    v = _CODE
    c = rng.choice
    verb, noun, arg = c(v["verb"]), c(v["noun"]), c(v["noun"])
    kind = rng.randrange(4)
    if kind == 0:
        acc = c(["result", "acc", "value", "n"])
        return [
            f"def {verb}_{noun}({arg}, limit={rng.randrange(1, 100)}):",
            f'    """{verb.capitalize()} the {noun} from {arg}."""',
            f"    {acc} = {rng.randrange(0, 10)}",
            f"    for x in {arg}:",
            f"        if x {c(v['cmp'])} limit:",
            f"            {acc} = {acc} {c(v['op'])} x",
            f"    return {acc}",
        ]
    if kind == 1:
        cls = noun.capitalize().rstrip("s") + c(["Store", "Table", "Index", "Loader"])
        return [
            f"class {cls}:",
            "    def __init__(self, size=%d):" % rng.randrange(8, 512),
            "        self.size = size",
            f"        self.{noun} = []",
            "",
            f"    def {verb}(self, {arg}):",
            f"        self.{noun}.append({arg})",
            f"        return len(self.{noun})",
        ]
    if kind == 2:
        keys = rng.sample(v["noun"], 3)
        return [f"{noun.upper()} = {{"] + [f'    "{k}": {rng.randrange(0, 1000)},' for k in keys] + ["}"]
    return [
        f"# {verb} every {noun} below {rng.randrange(2, 50)}",
        f"{noun} = [x {c(v['op'])} {rng.randrange(1, 9)} for x in {arg} if x {c(v['cmp'])} {rng.randrange(0, 20)}]",
        f"print(len({noun}), sum({noun}))",
    ]


def _code_document(rng: random.Random) -> list[list[str]]:
    return [_code_block(rng) for _ in range(rng.randint(1, 3))]


# --- assembly ------------------------------------------------------------------------------------------

_MAKERS = {"en": _en_document, "ja": _ja_document, "code": _code_document}
_JOIN = {"en": (" ", "\n\n"), "ja": ("", "\n"), "code": ("\n", "\n\n")}  # (within a block, between blocks)
_CANARY_FORM = {"en": "{c}.", "ja": "{c}。", "code": "# {c}"}
_HEX = "0123456789abcdef"


def _canary_texts(rng: random.Random, n: int) -> list[str]:
    """`n` distinct canaries, none a substring of another."""
    texts: list[str] = []
    while len(texts) < n:
        body = "".join(rng.choice(_HEX) for _ in range(rng.randint(12, 20)))
        text = CANARY_PREFIX + body
        if not any(text in t or t in text for t in texts):
            texts.append(text)
    return texts


def _pick(rng: random.Random, ids: list[int], k: int) -> list[int]:
    """`k` document ids: distinct while there are enough, else drawn with replacement."""
    if not ids:
        return []
    return sorted(rng.sample(ids, k) if k <= len(ids) else rng.choices(ids, k=k))


Segment = tuple[str, str | None, str | None]  # (text, span label, the part of text the span covers)


def _insert(rng: random.Random, blocks: list[list[Segment]], item: Segment, domain: str) -> None:
    """Insert a planted segment at a random place of a random block (code: at a block's start or end)."""
    block = rng.choice(blocks)
    where = rng.choice((0, len(block))) if domain == "code" else rng.randint(0, len(block))
    block.insert(where, item)


def _assemble(doc_id: int, domain: str, blocks: list[list[Segment]]) -> Document:
    """Join segments into text and record fact/canary spans, then add script spans."""
    inner, outer = _JOIN[domain]
    parts: list[str] = []
    planted: list[Span] = []
    pos = 0
    for b, block in enumerate(blocks):
        if b:
            parts.append(outer)
            pos += len(outer)
        for s, (segment, label, needle) in enumerate(block):
            if s:
                parts.append(inner)
                pos += len(inner)
            if label is not None:
                start = pos + (segment.index(needle) if needle else 0)
                planted.append(Span(start, start + len(needle or segment), label))
            parts.append(segment)
            pos += len(segment)
    text = "".join(parts)
    return Document(doc_id, text, domain, domain, script_spans(text) + planted)


def generate(
    seed: int = 0,
    n_documents: int = 2000,
    *,
    mix: dict[str, float] | None = None,
    n_facts: int = len(_FACT_TABLE),
    fact_copies: tuple[int, ...] = (2, 4, 8, 16),
    canary_frequencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    canaries_per_frequency: int = 2,
) -> SyntheticCorpus:
    """Generate the synthetic corpus; the same arguments always give the same corpus.

    `mix` is the share of each domain (default en 0.4, ja 0.4, code 0.2). Fact `i` is written into
    `fact_copies[i % len(fact_copies)]` documents of each language it is planted in; each canary is written
    `copies` times (in distinct documents while there are enough), for every `copies` in
    `canary_frequencies`, `canaries_per_frequency` canaries each.
    """
    mix = mix or {"en": 0.4, "ja": 0.4, "code": 0.2}
    if unknown := sorted(set(mix) - set(DOMAINS)):
        raise ValueError(f"unknown domains {unknown}; choose from {DOMAINS}")
    if not 0 <= n_facts <= len(_FACT_TABLE):
        raise ValueError(f"n_facts must be between 0 and {len(_FACT_TABLE)}")
    rng = random.Random(seed)

    # domains: exact shares, the remainder to the largest, then shuffled
    names = [d for d in DOMAINS if mix.get(d, 0) > 0]
    weight = sum(mix[d] for d in names)
    counts = {d: int(n_documents * mix[d] / weight) for d in names}
    if names:
        counts[max(names, key=lambda d: mix[d])] += n_documents - sum(counts.values())
    domains = [d for d in names for _ in range(counts[d])]
    rng.shuffle(domains)

    blocks = [[[(s, None, None) for s in block] for block in _MAKERS[d](rng)] for d in domains]
    by_domain = {d: [i for i, dom in enumerate(domains) if dom == d] for d in DOMAINS}

    facts = []
    for i, row in enumerate(_FACT_TABLE[:n_facts]):
        fact = _fact_record(row, fact_copies[i % len(fact_copies)] if fact_copies else 0)
        for lang in ("en", "ja"):
            ids = _pick(rng, by_domain[lang], fact["copies"][lang])
            fact["document_ids"][lang] = ids
            fact["copies"][lang] = len(ids)
            for doc_id in ids:
                _insert(rng, blocks[doc_id], (fact["text"][lang], f"fact:{fact['id']}", None), lang)
        facts.append(fact)

    canaries = []
    all_ids = list(range(n_documents))
    plan = [f for f in canary_frequencies for _ in range(canaries_per_frequency)]
    for j, (text, copies) in enumerate(zip(_canary_texts(rng, len(plan)), plan)):
        cid = f"c{j:03d}"
        ids = _pick(rng, all_ids, copies)
        for doc_id in ids:
            form = _CANARY_FORM[domains[doc_id]].format(c=text)
            _insert(rng, blocks[doc_id], (form, f"canary:{cid}", text), domains[doc_id])
        canaries.append({"id": cid, "text": text, "copies": len(ids), "document_ids": ids})

    documents = [_assemble(i, domains[i], blocks[i]) for i in range(n_documents)]
    config = {
        "seed": seed,
        "n_documents": n_documents,
        "mix": dict(mix),
        "n_facts": n_facts,
        "fact_copies": list(fact_copies),
        "canary_frequencies": list(canary_frequencies),
        "canaries_per_frequency": canaries_per_frequency,
    }
    return SyntheticCorpus(documents, facts, canaries, seed, config)
