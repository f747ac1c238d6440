"""selfsup.text and ``selfsup experiment text``: data readers, tokenizer, encoder, views, methods, the settings,
and the experiment end to end on small files written here (the real Debian packages where installed)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from selfsup.losses import NTXentLoss
from selfsup.text import (
    DEFAULT_FORTUNES_DIR,
    DEFAULT_TOPICS,
    DEFAULT_WORDNET_DIR,
    Hierarchy,
    SimCSE,
    TextBYOL,
    TextTransformerEncoder,
    TokenAugmentation,
    WordVocabulary,
    read_fortune_file,
    read_fortunes,
    read_wordnet,
    split_of,
    split_words,
    two_views,
)
from selfsup.text.data import Synset, parse_synset_line
from selfsup.text.evaluate import TfidfFeatures, recall_at_1, spearman
from selfsup.text.train import MixedBatches

# --- small files in the packages' formats -----------------------------------------------------------------

TOPIC_WORDS = {
    "computers": "program compiler bug kernel byte memory disk software code debug".split(),
    "food": "bread cheese wine soup butter apple dinner cook eat sugar".split(),
    "law": "judge court lawyer jury crime law trial verdict guilty appeal".split(),
}
DOG_LINE = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 @ 01317541 n 0000 | "
            'a member of the genus Canis; "the dog barked all night"  ')


def write_fortunes(folder: Path, per_topic: int = 40, seed: int = 0) -> Path:
    generator = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for topic, words in TOPIC_WORDS.items():
        entries = [" ".join(generator.choice(words) for _ in range(generator.randint(4, 9))) + f" {topic} {i}."
                   for i in range(per_topic)]
        (folder / topic).write_text("\n%\n".join(entries) + "\n%\n")
        (folder / f"{topic}.dat").write_bytes(b"\x00\x00\x00\x02binary index")
        (folder / f"{topic}.u8").symlink_to(topic)
    return folder


def write_wordnet(folder: Path, children: int = 4, depth: int = 3, seed: int = 0) -> Path:
    """A noun tree (``children`` per synset, ``depth`` levels under the root) in WordNet's data format, each
    synset with a definition and an example; empty verb, adjective and adverb files."""
    generator = random.Random(seed)
    vocabulary = [w for words in TOPIC_WORDS.values() for w in words]
    lines, level, offset = [], [(10_000_000, None)], 10_000_000
    for _ in range(depth + 1):
        next_level = []
        for key, parent in level:
            pointers = f"001 @ {parent:08d} n 0000" if parent else "000"
            words = " ".join(generator.choice(vocabulary) for _ in range(6))
            example = " ".join(generator.choice(vocabulary) for _ in range(5))
            lines.append(f"{key:08d} 03 n 01 thing_{key} 0 {pointers} | a {words}; \"the {example}\"  ")
            for _ in range(children if len(lines) < 400 else 0):
                offset += 100
                next_level.append((offset, key))
        level = next_level
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.noun").write_text("  1 This software and database is being provided\n" + "\n".join(lines) + "\n")
    for part in ("verb", "adj", "adv"):
        (folder / f"data.{part}").write_text("  1 licence header only\n")
    return folder


# --- data ----------------------------------------------------------------------------------------------------


def test_read_fortune_file_splits_entries_and_removes_overstriking(tmp_path):
    path = tmp_path / "topic"
    path.write_bytes(b"First  fortune,\n\ton two lines.\n%\n\n%\nB\x08Bold and _\x08u\n%\n  -- last, no %\n")
    assert read_fortune_file(path) == ["First fortune, on two lines.", "Bold and u", "-- last, no %"]


def test_read_fortunes_labels_by_file_and_drops_ambiguous_texts(tmp_path):
    (tmp_path / "a").write_text("shared\n%\nonly a\n%\nonly a\n%\n")
    (tmp_path / "b").write_text("shared\n%\nonly b\n%\n")
    (tmp_path / "a.dat").write_bytes(b"\x00")
    data = read_fortunes(tmp_path, ["a", "b"])
    assert data.classes == ("a", "b")
    assert sorted(zip(data.texts, data.labels)) == [("only a", 0), ("only b", 1)]
    assert read_fortunes(tmp_path).classes == ("a", "b")  # every file, the .dat index left out
    with pytest.raises(ValueError, match="topic.*'?c"):
        read_fortunes(tmp_path, ["a", "c"])
    with pytest.raises(FileNotFoundError, match="fortunes"):
        read_fortunes(tmp_path / "missing")


def test_parse_synset_line_reads_words_definition_examples_and_hypernyms():
    synset = parse_synset_line(DOG_LINE)
    assert synset.key == "n02084071" and synset.lexicographer_file == 5
    assert synset.words == ("dog", "domestic dog", "Canis familiaris")
    assert synset.definition == "a member of the genus Canis"
    assert synset.examples == ("the dog barked all night",)
    assert synset.hypernyms == ("n02083346", "n01317541")
    assert synset.entry == ('dog, domestic dog, Canis familiaris: a member of the genus Canis; '
                            '"the dog barked all night"')
    assert parse_synset_line("  1 This software and database is being provided") is None


def test_read_wordnet_and_wu_palmer_on_written_files(tmp_path):
    synsets = read_wordnet(write_wordnet(tmp_path, children=2, depth=2))
    assert len(synsets) == 1 + 2 + 4
    hierarchy = Hierarchy(synsets)
    root, child, grandchild = synsets[0].key, synsets[1].key, synsets[3].key
    assert hierarchy.depth(root) == 1 and hierarchy.depth(grandchild) == 3
    assert hierarchy.wu_palmer(grandchild, grandchild) == 1.0
    assert hierarchy.wu_palmer(child, grandchild) == pytest.approx(2 * 2 / (0 + 1 + 2 * 2))
    siblings = [s.key for s in synsets if s.hypernyms == (child,)]
    assert hierarchy.wu_palmer(*siblings) == pytest.approx(2 * 2 / (1 + 1 + 4))
    assert Hierarchy([Synset("n1", 3, ("a",), "x", (), ()), Synset("n2", 3, ("b",), "y", (), ())]).wu_palmer(
        "n1", "n2") == 0.0
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_wordnet(tmp_path / "missing")


def test_split_of_is_fixed_and_about_70_10_20():
    keys = [f"text {i}" for i in range(5000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]
    assert 0.17 < splits.count("test") / 5000 < 0.23 and 0.08 < splits.count("val") / 5000 < 0.12


@pytest.mark.skipif(not Path(DEFAULT_FORTUNES_DIR, "computers").is_file(),
                    reason=f"Debian's 'fortunes' package is not installed ({DEFAULT_FORTUNES_DIR})")
def test_real_fortunes_package():
    data = read_fortunes(DEFAULT_FORTUNES_DIR, DEFAULT_TOPICS)
    assert data.classes == DEFAULT_TOPICS and len(data) > 5000
    assert set(data.labels) == set(range(len(DEFAULT_TOPICS)))
    assert all(text and "\n" not in text and "\x08" not in text for text in data.texts)


@pytest.mark.skipif(not Path(DEFAULT_WORDNET_DIR, "data.noun").is_file(),
                    reason=f"Debian's 'wordnet-base' package is not installed ({DEFAULT_WORDNET_DIR})")
def test_real_wordnet_package():
    synsets = read_wordnet(DEFAULT_WORDNET_DIR, parts=("noun",))
    assert len(synsets) == 82115
    dog = next(s for s in synsets if s.key == "n02084071")
    assert dog.words[0] == "dog" and "the dog barked all night" in dog.examples
    cat = next(s for s in synsets if s.key == "n02121620")  # true cat
    hierarchy = Hierarchy(synsets)
    assert 0.8 < hierarchy.wu_palmer(dog.key, cat.key) < 0.9  # both carnivores; NLTK gives 0.857 for dog/cat


# --- tokenizer -------------------------------------------------------------------------------------------


def test_split_words_lowercases_and_keeps_punctuation_apart():
    assert split_words("Don't PANIC -- it's 42!") == ["don't", "panic", "-", "-", "it's", "42", "!"]


def test_vocabulary_fit_is_deterministic_and_capped():
    texts = ["b a b", "c b a", "d"]
    vocabulary = WordVocabulary.fit(texts, max_size=5, min_count=1)
    assert vocabulary.tokens == ("[PAD]", "[UNK]", "[CLS]", "b", "a")  # by count, then alphabetically
    assert WordVocabulary.fit(list(reversed(texts)), max_size=5, min_count=1).tokens == vocabulary.tokens
    assert "d" not in WordVocabulary.fit(texts, min_count=2).ids
    assert vocabulary.encode("a c b a", max_length=3) == [4, 1, 3]
    ids, mask = vocabulary.pad([[3, 4], [4]])
    assert ids.tolist() == [[2, 3, 4], [2, 4, 0]] and mask.tolist() == [[True] * 3, [True, True, False]]
    with pytest.raises(ValueError, match="starts with"):
        WordVocabulary(["a", "[PAD]", "[UNK]"])


# --- encoder, views, methods -----------------------------------------------------------------------------


def _encoder(pooling="mean", dropout=0.1, vocabulary_size=50):
    torch.manual_seed(0)
    return TextTransformerEncoder(vocabulary_size, dim=32, depth=2, heads=4, max_length=16, dropout=dropout,
                                  pooling=pooling)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_encoder_shapes_and_padding_does_not_change_features(pooling):
    encoder = _encoder(pooling).eval()
    vocabulary = WordVocabulary(("[PAD]", "[UNK]", "[CLS]") + tuple(f"w{i}" for i in range(47)))
    ids, mask = vocabulary.pad([[5, 6, 7], [8, 9, 10, 11, 12, 13]])
    features = encoder(ids, mask)
    assert features.shape == (2, 32) and encoder.feature_dim == 32
    alone = encoder(*vocabulary.pad([[5, 6, 7]]))
    torch.testing.assert_close(features[:1], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        encoder(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))


def test_dropout_masks_differ_between_the_two_passes_of_one_batch():
    encoder = _encoder()
    vocabulary = WordVocabulary(("[PAD]", "[UNK]", "[CLS]") + tuple(f"w{i}" for i in range(47)))
    batch = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    ids, mask = vocabulary.pad(two_views(batch, TokenAugmentation(), random.Random(0)))
    assert torch.equal(ids[:3], ids[3:])  # dropout-only views: the same tokens twice
    features = encoder.train()(ids, mask)
    assert (features[:3] - features[3:]).abs().amax(dim=1).min() > 1e-4  # every pair differs
    features = encoder.eval()(ids, mask)
    torch.testing.assert_close(features[:3], features[3:])  # no dropout in evaluation: identical


def test_augmentations_keep_the_texts_tokens():
    generator = random.Random(0)
    tokens = list(range(100, 140))
    for _ in range(50):
        cropped = TokenAugmentation(crop_min_fraction=0.25, crop_max_fraction=0.5)(tokens, generator)
        start = tokens.index(cropped[0])
        assert cropped == tokens[start:start + len(cropped)] and 10 <= len(cropped) <= 20
        deleted = TokenAugmentation(deletion_probability=0.3)(tokens, generator)
        assert 1 <= len(deleted) < 40 and deleted == sorted(deleted) and set(deleted) <= set(tokens)
        reordered = TokenAugmentation(reorder_window=3)(tokens, generator)
        assert sorted(reordered) == tokens
        assert all(abs(reordered.index(t) - tokens.index(t)) < 3 for t in tokens)
        edited = TokenAugmentation(0.1, 0.6, 0.2, 4)(tokens, generator)
        assert edited and set(edited) <= set(tokens) and len(set(edited)) == len(edited)
    assert TokenAugmentation(deletion_probability=0.99)([7, 8, 9], generator) in ([7], [8], [9])  # one is kept


def test_augmentations_with_zero_strength_change_nothing():
    generator = random.Random(0)
    tokens = [5, 3, 9, 9, 1]
    assert TokenAugmentation(1.0, 1.0, deletion_probability=0.0, reorder_window=1)(tokens, generator) == tokens
    batch = [[1, 2, 3], [4]]
    assert two_views(batch, TokenAugmentation(), generator) == batch + batch
    with pytest.raises(ValueError, match="deletion_probability"):
        TokenAugmentation(deletion_probability=1.0)
    with pytest.raises(ValueError, match="crop fractions"):
        TokenAugmentation(crop_min_fraction=0.6, crop_max_fraction=0.5)


def test_two_views_draw_their_own_edits():
    batch = [list(range(30))] * 4
    views = two_views(batch, TokenAugmentation(0.5, 1.0, 0.1, 3), random.Random(0))
    assert len({tuple(v) for v in views}) == 8


def test_simcse_uses_ntxent_on_the_projections_of_the_two_halves():
    method = SimCSE(_encoder(dropout=0.0), projection_hidden_dim=16, projection_dim=8, temperature=0.05)
    ids = torch.randint(3, 50, (8, 6))
    mask = torch.ones_like(ids, dtype=torch.bool)
    output = method(ids, mask)
    z = method.projector(method.encoder(ids, mask))
    torch.testing.assert_close(output.loss, NTXentLoss(0.05, gather_distributed=False)(z[:4], z[4:]))
    output.loss.backward()
    assert method.encoder.token_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="stacked"):
        method(ids[:3], mask[:3])


def test_text_byol_target_takes_no_gradient_and_follows_the_ema():
    method = TextBYOL(_encoder(), projection_hidden_dim=16, projection_dim=8, prediction_hidden_dim=16)
    ids = torch.randint(3, 50, (8, 6))
    output = method(ids, torch.ones_like(ids, dtype=torch.bool))
    output.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target_encoder.parameters())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_encoder.parameters()]
    method.update_target(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, method.target_encoder.parameters()))
    method.update_target(0.0)
    assert all(torch.equal(a, b) for a, b in zip(method.encoder.parameters(), method.target_encoder.parameters()))


def test_mixed_batches_draw_the_share_from_each_source():
    first, second = [[1]] * 5, [[2]] * 50
    batches = MixedBatches([first, second], batch_size=8, share=0.5, seed=0)
    for _ in range(4):
        assert sorted(s[0] for s in batches.next()) == [1] * 4 + [2] * 4


# --- evaluation --------------------------------------------------------------------------------------------


def test_recall_at_1_spearman_and_tfidf():
    keys = torch.eye(4)
    assert recall_at_1(keys + 0.1, keys) == 100.0
    assert recall_at_1(keys.roll(1, dims=0), keys) == 0.0
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), [10, 20, 30]) == pytest.approx(100.0)
    vocabulary = WordVocabulary.fit(["cheese bread wine", "judge court law"], min_count=1)
    tfidf = TfidfFeatures(vocabulary, ["cheese bread wine", "judge court law"], max_length=2)
    features = tfidf(["cheese bread wine", "court judge"])
    assert features.shape == (2, len(vocabulary) - 3)
    assert features[0, vocabulary.tokens.index("wine") - 3] == 0  # beyond max_length: the encoder's cut too
    assert recall_at_1(tfidf(["judge court", "bread cheese"]), tfidf(["court judge", "cheese bread"])) == 100.0


# --- settings and the experiment ------------------------------------------------------------------------


def test_settings_validate_and_every_field_has_a_help_line():
    from selfsup.experiments.text import TextExperimentSettings
    from selfsup.settings import field_help

    helps = field_help(TextExperimentSettings)
    assert all(helps.get(f) for f in TextExperimentSettings.__dataclass_fields__), helps
    with pytest.raises(ValueError, match="setting 'temperatures'"):
        TextExperimentSettings(temperatures=(0.1, 0.0))
    with pytest.raises(ValueError, match="setting 'variants'"):
        TextExperimentSettings(variants=("dropout", "moco"))
    with pytest.raises(ValueError, match="setting 'dim'"):
        TextExperimentSettings(dim=30, heads=4)


def test_text_experiment_end_to_end_on_written_files(tmp_path):
    from selfsup.experiments.text import TextExperimentSettings, run_text_experiment

    settings = TextExperimentSettings(
        fortunes=str(write_fortunes(tmp_path / "fortunes")), topics=tuple(TOPIC_WORDS),
        wordnet=str(write_wordnet(tmp_path / "wordnet")), out=str(tmp_path / "out"), steps=3, batch_size=8,
        max_length=12, dim=16, heads=2, projection_hidden_dim=16, projection_dim=8, temperatures=(0.05, 0.2),
        retrieval_pairs=20, similarity_pairs=30, log_every=1, subset=40, progress=False, threads=1)
    start = time.perf_counter()
    lines = []
    results = run_text_experiment(settings, command="selfsup experiment text --steps 3", log=lines.append)
    assert time.perf_counter() - start < 30
    names = set(results["variants"])
    assert {"tfidf", "random", "augmented-t0.05", "augmented-t0.2", "byol"} < names and len(names) == 6
    dropout = results["variants"][(names - {"tfidf", "random", "augmented-t0.05", "augmented-t0.2", "byol"}).pop()]
    swept = [results["variants"][f"augmented-t{t}"] for t in ("0.05", "0.2")]
    assert dropout["temperature"] == max(swept, key=lambda r: r["selection_score"])["temperature"]  # chosen on val
    for name, scores in results["variants"].items():
        assert set(scores["test"]) == {"knn", "linear", "recall_at_1", "spearman"}, name
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "selfsup experiment text --steps 3" in report and "random init" in report and "TF-IDF" in report
    for figure in ("accuracy.png", "similarities.png", "map.png", "monitors.png"):
        assert (out / figure).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["variants"]["random"]["test"] == results["variants"]["random"]["test"]
    assert json.loads((out / "runs" / "byol.json").read_text())[0]["step"] == 1
    assert any("TF-IDF" in line for line in lines)
