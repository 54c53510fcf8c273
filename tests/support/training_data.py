"""Small memorisable datasets for training tests, written as a JSONL ``DatasetSource``."""

from __future__ import annotations

from pathlib import Path

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Poland", "Warsaw")]

STORY = ("Once upon a time there was a small village near the mountains. The people of the village were kind. "
         "A dragon lived above the village. The knight rode to the mountain. The dragon and the knight became "
         "friends. The village was safe again. Everyone celebrated with bread and music.")


def chat_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is the capital of {c}?"},
                          {"role": "assistant", "content": f"The capital of {c} is {a}."}]} for c, a in CAPITALS]


def pair_rows() -> list[dict]:
    return [{"prompt": f"capital of {c}", "completion": f"{a} is the capital city of {c}"} for c, a in CAPITALS]


def text_rows() -> list[dict]:
    rows = [{"text": STORY}]
    rows += [{"text": f"The capital of {c} is {a}. {a} is a city in {c}. People in {a} speak with friends."}
             for c, a in CAPITALS]
    return rows


def write_source(root: Path, kind: str):
    from trainer.runs.data import write_jsonl_source

    rows = {"chat": chat_rows, "pairs": pair_rows, "text": text_rows}[kind]()
    return write_jsonl_source(root, {"train": rows, "validation": rows[:4]})


def insert_dataset_versions(conn, statuses: dict[str, str]) -> None:
    """Dataset version rows (the datasets domain's tables) with the given ids and statuses, for runs tests whose
    records come from a JSONL export in ``<data_dir>/datasets/<id>/``."""
    from sqlalchemy import insert

    from gateway.db.datasets import Dataset, DatasetVersion

    for version_id, status in statuses.items():
        conn.execute(insert(Dataset.__table__).values(id=f"d{version_id}"[:32], name=f"runs-test-{version_id}",
                                                      owner="user:alice"))
        conn.execute(insert(DatasetVersion.__table__).values(id=version_id, dataset_id=f"d{version_id}"[:32],
                                                             number=1, status=status, owner="user:alice"))
