"""TextClassificationData: lists, CSV and JSON lines, labels, the tokenizer, padding, and every refusal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from text_helpers import make_texts

from finetune_strategies.errors import MissingPathError, PretrainedWeightsError, TextDataError
from finetune_strategies.text import TextClassificationData, build_wordpiece_tokenizer


def write_csv(path: Path, rows: list[dict[str, object]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(n: int = 8, seed: int = 0, label=lambda name: name) -> list[dict[str, object]]:
    texts, labels = make_texts(n, seed)
    return [{"id": i, "review": t, "mood": label(m)} for i, (t, m) in enumerate(zip(texts, labels, strict=True))]


def batches(data: TextClassificationData, stage: str = "train") -> list[dict[str, torch.Tensor]]:
    data.setup("fit")
    return list(getattr(data, f"{stage}_dataloader")())


def test_lists_with_class_names_give_sorted_classes_and_padded_batches() -> None:
    texts, labels = make_texts(12)
    texts[0] = texts[0] + " and a much longer tail of several more words than the others"
    data = TextClassificationData.from_lists(texts, labels, predict_texts=["good day"], batch_size=4)
    assert (data.labels, data.num_classes) == (["negative", "positive"], 2)
    train = batches(data)
    assert sum(len(b["labels"]) for b in train) == 12
    widths = {b["input_ids"].shape[1] for b in train}
    assert len(widths) > 1, "each batch is padded to its own longest text"
    for batch in train:
        assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
        assert (batch["input_ids"][batch["attention_mask"] == 0] == data.tokenizer.pad_token_id).all()
    encoded = {
        tuple(ids[mask.bool()].tolist()): int(label)
        for b in train
        for ids, mask, label in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True)
    }
    for text, label in zip(texts, labels, strict=True):
        assert encoded[tuple(data.tokenizer(text)["input_ids"])] == ["negative", "positive"].index(label)
    (predict,) = list(data.predict_dataloader())
    assert "labels" not in predict
    assert data.predict_ids == ["0"]


def test_int_labels_take_names_from_labels_and_max_length_truncates() -> None:
    texts, names = make_texts(6)
    data = TextClassificationData.from_lists(
        texts, [int(n == "positive") for n in names], labels=["neg", "pos"], max_length=4
    )
    assert data.labels == ["neg", "pos"]
    (batch,) = batches(data)
    assert batch["input_ids"].shape[1] == 4
    assert (batch["input_ids"][:, -1] == data.tokenizer.sep_token_id).all()  # [CLS] 2 tokens [SEP]


def test_csv_tsv_and_jsonl_files_give_the_same_data(tmp_path: Path) -> None:
    csv_data = TextClassificationData.from_csv(
        write_csv(tmp_path / "train.csv", rows()),
        write_csv(tmp_path / "val.csv", rows(4, seed=1)),
        text_field="review",
        label_field="mood",
    )
    tsv_data = TextClassificationData(
        write_csv(tmp_path / "train.tsv", rows(), "\t"), text_field="review", label_field="mood", val_split=0.25
    )
    jsonl_data = TextClassificationData.from_jsonl(
        write_jsonl(tmp_path / "train.jsonl", rows()),
        predict_file=write_jsonl(tmp_path / "predict.jsonl", [{"review": "good"}, {"review": "bad"}]),
        text_field="review",
        label_field="mood",
    )
    for data in (csv_data, tsv_data, jsonl_data):
        assert data.labels == ["negative", "positive"]
    assert sum(len(b["labels"]) for b in batches(csv_data, "val")) == 4
    assert [len(b["labels"]) for b in batches(tsv_data, "val")] == [2]  # a quarter of each class held out
    assert sum(len(b["labels"]) for b in batches(tsv_data)) == 6
    assert len(next(iter(batches(jsonl_data, "predict")))["input_ids"]) == 2
    first = [b["input_ids"].tolist() for b in batches(csv_data)]
    assert first == [b["input_ids"].tolist() for b in batches(jsonl_data)]  # same texts, same tokens, same order


def test_csv_labels_that_are_whole_numbers_are_class_indices(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", rows(label=lambda name: int(name == "positive") * 2))
    data = TextClassificationData(path, text_field="review", label_field="mood")
    assert data.labels == ["0", "1", "2"]  # indices 0 and 2: class 1 has no sample yet


def test_the_training_order_is_a_seeded_shuffle_new_each_epoch() -> None:
    texts, labels = make_texts(16)
    data = TextClassificationData.from_lists(texts, labels, batch_size=16)
    data.setup("fit")
    order = []
    for epoch in (0, 1, 0):
        sampler = data.train_dataloader().sampler
        sampler.set_epoch(epoch)
        order.append(list(sampler))
    assert order[0] == order[2] != order[1]
    assert sorted(order[0]) == list(range(16))


def test_a_tokenizer_folder_is_loaded(tmp_path: Path) -> None:
    texts, labels = make_texts(8)
    build_wordpiece_tokenizer(texts, 100, 32).save_pretrained(tmp_path / "tok")
    data = TextClassificationData.from_lists(texts, labels, tokenizer=tmp_path / "tok")
    data.setup("fit")
    assert data.tokenizer.get_vocab() == build_wordpiece_tokenizer(texts, 100, 32).get_vocab()
    predict_only = TextClassificationData.from_lists(predict_texts=["good"], tokenizer=tmp_path / "tok")
    predict_only.setup("predict")
    assert predict_only.num_classes is None


def test_the_built_vocabulary_is_bounded_and_holds_every_character() -> None:
    texts, _ = make_texts(32)
    full = build_wordpiece_tokenizer(texts, 1000, 32)
    small = build_wordpiece_tokenizer(texts, 70, 32)
    assert len(small) == 70 < len(full)
    assert "[UNK]" not in small.tokenize(" ".join(texts))  # rarer words are spelled with ## pieces
    with pytest.raises(TextDataError, match="give vocab_size >= "):
        build_wordpiece_tokenizer(texts, 20, 32)


def bad_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: TextClassificationData.from_lists(["a", "b"], ["x"]), TextDataError, "2 texts but .* 1 targets"),
        (lambda p: TextClassificationData.from_lists(["a", " "], ["x", "y"]), TextDataError, r"train_texts\[1\]"),
        (lambda p: TextClassificationData.from_lists(["a", 3], ["x", "y"]), TextDataError, "must be a string"),
        (lambda p: TextClassificationData.from_lists("ab", ["x", "y"]), TextDataError, "list of strings, got str"),
        (lambda p: TextClassificationData.from_lists(["a", "b"]), TextDataError, "train_labels` is missing"),
        (lambda p: TextClassificationData.from_lists(["a", "b"], ["x", "x"]), TextDataError, "at least 2 classes"),
        (lambda p: TextClassificationData.from_lists(["a", "b"], ["x", 1]), TextDataError, "a mix of ints"),
        (
            lambda p: TextClassificationData.from_lists(["a", "b"], ["x", "z"], labels=["x", "y"]),
            TextDataError,
            "Targets z are not in",
        ),
        (lambda p: TextClassificationData.from_lists(["a", "b"], [0, 2], labels=["x", "y"]), TextDataError, "< 2"),
        (lambda p: TextClassificationData.from_lists(val_texts=["a"], val_labels=["x"]), TextDataError, "need train"),
        (
            lambda p: TextClassificationData.from_lists(["a", "b"], [0, 1], ["c"], [0], val_split=0.5),
            TextDataError,
            "not both",
        ),
        (lambda p: TextClassificationData(val_split=1.0), TextDataError, r"\[0, 1\)"),
        (lambda p: TextClassificationData(batch_size=0), TextDataError, "batch_size"),
        (lambda p: TextClassificationData(tokenizer=3), TextDataError, "a model id, a folder"),
        (lambda p: TextClassificationData(p / "missing.csv"), MissingPathError, "does not exist"),
        (lambda p: TextClassificationData(bad_file(p, "t.txt", "x")), TextDataError, "unknown file type '.txt'"),
        (
            lambda p: TextClassificationData(bad_file(p, "t.csv", "txt,label\na,b\n")),
            TextDataError,
            "no 'text' field. Did you mean 'txt'",
        ),
        (lambda p: TextClassificationData(bad_file(p, "t.csv", "text,label\n")), TextDataError, "holds no records"),
        (lambda p: TextClassificationData(bad_file(p, "t.jsonl", '{"text": "a"}\nnope\n')), TextDataError, "line 2"),
        (lambda p: TextClassificationData(bad_file(p, "t.jsonl", "[1]\n")), TextDataError, "JSON object"),
        (
            lambda p: TextClassificationData(bad_file(p, "t.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n')),
            TextDataError,
            "records 2 have no 'label'",
        ),
        (lambda p: TextClassificationData.from_csv(bad_file(p, "t.jsonl", "")), TextDataError, "Use from_jsonl"),
    ],
)
def test_bad_inputs_are_refused_saying_what_is_expected(tmp_path: Path, make, error, message) -> None:
    with pytest.raises(error, match=message):
        make(tmp_path)


def test_without_training_texts_or_a_tokenizer_setup_says_what_to_give(tmp_path: Path) -> None:
    data = TextClassificationData.from_lists(predict_texts=["good"])
    with pytest.raises(TextDataError, match="no training texts to build a tokenizer from: give tokenizer="):
        data.setup("predict")
    with pytest.raises(PretrainedWeightsError, match="tokenizer=None to build one"):
        TextClassificationData.from_lists(predict_texts=["a"], tokenizer=tmp_path / "none").setup("predict")
    with pytest.raises(TextDataError, match="No test data: build the data module with test_file or test_texts"):
        TextClassificationData.from_lists(["a", "b"], ["x", "y"]).test_dataloader()
