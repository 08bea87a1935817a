"""Every built-in task reads its benchmark's official annotation layout from small fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import LAYOUT_WRITERS, write_json

from eval.metrics import LETTERS
from eval.tasks import Doc, TaskConfig, get_task, list_tasks

BUILT_IN = sorted(list_tasks())


def test_every_built_in_task_has_a_fixture():
    assert sorted(LAYOUT_WRITERS) == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_task_loads_its_layout(name, tmp_path):
    expected = LAYOUT_WRITERS[name](tmp_path)
    task = get_task(name)
    docs = task.load_docs(tmp_path)
    assert docs, name
    assert len({d.id for d in docs}) == len(docs)
    for doc in docs:
        prompt = task.render_prompt(doc)
        assert doc.question in prompt
        if task.answer_format == "multiple_choice":
            assert doc.options
            if doc.error is None:
                assert doc.answer_letter in LETTERS[: len(doc.options)]
                assert all(f"{o}" in prompt for o in doc.options)
        if doc.error is None and name not in ("msvd-qa", "msrvtt-qa", "tgif-qa", "activitynet-qa"):
            assert Path(doc.video).exists(), doc
    if "answers" in expected:  # the Video-ChatGPT layout
        by_id = {d.id: d for d in docs}
        assert [d.id for d in docs] == expected["ids"]
        for qid, video in expected["videos"].items():
            assert Path(by_id[qid].video) == video
        for qid, answer in expected["answers"].items():
            assert by_id[qid].answer == answer
        assert not Path(by_id["q3"].video).exists()  # kept: its read fails and is counted wrong
        assert by_id["q0"].fields["type"] == 4
    if name == "synthetic-qa" or name == "synthetic-mc":
        assert len(docs) == expected["questions"]


def test_activitynet_names_carry_the_v_prefix(tmp_path):
    LAYOUT_WRITERS["activitynet-qa"](tmp_path)
    docs = get_task("activitynet-qa").load_docs(tmp_path)
    assert Path(docs[0].video).name == "v_vid_one.mp4"
    assert Path(docs[1].video).name == "v_vid_two.mkv"  # found by the extension search


def test_mvbench_windows_frames_and_prompt(tmp_path):
    expected = LAYOUT_WRITERS["mvbench"](tmp_path)
    task = get_task("mvbench")
    docs = {d.id: d for d in task.load_docs(tmp_path)}
    assert set(docs) == set(expected)
    for doc_id, flags in expected.items():
        doc = docs[doc_id]
        assert (doc.start, doc.end) == ((0.5, 1.5) if flags["bound"] else (None, None))
        assert (doc.frame_fps is not None) == flags["frames"]
        assert doc.answer_letter == "B"
        assert doc.fields["task_type"] == doc_id.split("/")[0]
    prompt = task.render_prompt(docs["action_sequence/0"])
    assert (
        "Question: What happens in action sequence?\nOptions:\n(A) nothing\n(B) a square moves\n(C) a circle spins\n"
        in prompt
    )
    assert prompt.endswith("Best option:(")


def test_videomme_letters_and_labels(tmp_path):
    LAYOUT_WRITERS["videomme"](tmp_path)
    task = get_task("videomme")
    first, second = task.load_docs(tmp_path)
    assert first.options == ["One.", "Two.", "Three.", "Four."]
    assert first.answer == "Three."
    assert first.answer_letter == "C"
    assert first.fields["duration"] == "short"
    assert "A. One.\nB. Two.\nC. Three.\nD. Four." in task.render_prompt(first)
    assert "(A, B, C, D)" in task.render_prompt(first)
    assert second.error is not None
    assert "'E'" in second.error


def test_videomme_without_its_annotations_names_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test-00000-of-00001\.parquet"):
        get_task("videomme").load_docs(tmp_path)


def test_bad_items_are_kept_with_their_reason(tmp_path):
    write_json(
        tmp_path / "q.json",
        [
            {"video_name": "v", "question": "what", "question_id": 1},
            {"question": "no video", "question_id": 2},
        ],
    )
    write_json(tmp_path / "a.json", [{"answer": "x", "question_id": 1}])
    task = TaskConfig(
        task="t",
        loader="video_chatgpt",
        dataset_kwargs={"questions": "q.json", "answers": "a.json", "video_dir": "."},
    )
    first, second = task.load_docs(tmp_path)
    assert first.error is None
    assert first.answer == "x"
    assert second.error == "the annotation names no video"
    write_json(tmp_path / "a.json", [])
    assert "no answer" in task.load_docs(tmp_path)[0].error


def test_repeated_ids_are_made_unique(tmp_path):
    write_json(tmp_path / "q.json", [{"video_name": "v", "question": "a", "question_id": "x"}] * 3)
    write_json(tmp_path / "a.json", [{"answer": "y", "question_id": "x"}])
    task = TaskConfig(
        task="t",
        loader="video_chatgpt",
        dataset_kwargs={"questions": "q.json", "answers": "a.json", "video_dir": "."},
    )
    assert [d.id for d in task.load_docs(tmp_path)] == ["x", "x#1", "x#2"]


def test_user_task_from_include_path_with_its_own_loader(tmp_path):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "my_loader.py").write_text(
        "from eval.tasks import Doc\n\n"
        "def load(data_root, *, suffix):\n"
        "    return [Doc(id=f'd{i}', video=str(data_root / f'{i}{suffix}'), question=f'q{i}?', answer='red') for i in range(3)]\n"
    )
    (tasks / "mine.yaml").write_text(
        "task: my-task\nloader: my_loader:load\ndataset_kwargs: {suffix: .mp4}\n"
        "prompt: 'Look closely. {question}'\nmetrics: [exact_match]\n"
    )
    # a user file may also replace a built-in task of the same name
    (tasks / "override.yaml").write_text(
        "task: synthetic-qa\nloader: video_chatgpt\ndataset_kwargs: {questions: q.json, answers: a.json, video_dir: v}\n"
    )
    all_tasks = list_tasks([tasks])
    assert all_tasks["synthetic-qa"].source.endswith("override.yaml")
    task = get_task("my-task", [tasks])
    docs = task.load_docs(tmp_path)
    assert [d.id for d in docs] == ["d0", "d1", "d2"]
    assert task.render_prompt(docs[1]) == "Look closely. q1?"
    assert task.primary_metric == "exact_match"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("task: x\nloader: video_chatgpt\nanswer_format: essay\n", "answer_format"),
        (
            "task: x\nloader: video_chatgpt\nanswer_format: multiple_choice\nmetrics: [exact_match]\n",
            "do not apply",
        ),
        ("task: x\nloader: video_chatgpt\nmetrics: [exact_match]\nprimary_metric: judge\n", "primary_metric"),
        ("task: x\nloader: video_chatgpt\nprompt: 'no fields'\n", "uses no field"),
        ("task: x\nloader: video_chatgpt\npromt: '{question}'\n", "unknown task keys"),
        ("loader: video_chatgpt\n", "at least 'task' and 'loader'"),
    ],
)
def test_bad_task_files_are_refused(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        TaskConfig.from_yaml(path)


def test_prompt_field_missing_from_an_item_is_a_question_error():
    task = TaskConfig(task="t", loader="video_chatgpt", prompt="{question} ({category})")
    with pytest.raises(ValueError, match="category"):
        task.render_prompt(Doc(id="1", video="v.mp4", question="what", answer="x"))
