"""Zero-shot classification fairness: accuracy per group and harmful-label rates, by hand."""
import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit import zeroshot as zs


class WordEncoder:
    """Texts -> fixed unit vectors: the class prompts point along known axes."""
    AXES = {"a photo of a man": 0, "a photo of a woman": 1, "a photo of a gorilla": 2, "a photo of a thief": 3}

    def encode_texts(self, texts):
        out = np.zeros((len(texts), 4), np.float32)
        for i, t in enumerate(texts):
            out[i, self.AXES[t]] = 1.0
        return out


PROMPTS = {"gender": {"Male": ["a photo of a man"], "Female": ["a photo of a woman"]},
           "race_gender": {"M": ["a photo of a man"], "F": ["a photo of a woman"]},
           "extra_class_prompts": {"gorilla": ["a photo of a gorilla"], "thief": ["a photo of a thief"]},
           "crime_related": ["thief"], "non_human": ["gorilla"],
           "label_sets": {"mini": ["M", "F", "gorilla", "thief"]}}


def _world():
    # 4 Male and 4 Female images in groups X and Y; two Y images embed nearest "gorilla", one X image
    # nearest "thief", one Y-Female image nearest "man" (a gender error); one image has no gender label
    labels = pd.DataFrame({"image_id": list("abcdefghi"),
                           "gender": ["Male", "Male", "Female", "Female", "Male", "Male", "Female", "Female", ""],
                           "race": ["X", "X", "X", "X", "Y", "Y", "Y", "Y", "Y"]})
    axis = [0, 3, 1, 1, 0, 2, 2, 0, 0]  # the axis each image lies closest to
    emb = np.eye(4, dtype=np.float32)[axis] * 0.9 + 0.05
    return labels, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_accuracy_per_group_by_hand():
    labels, emb = _world()
    t = zs.accuracy_table(labels, emb, WordEncoder(), PROMPTS, ["gender"]).set_index(["group_attribute", "group"])
    # 8 images have a gender label. Classified among man/woman only, images off both axes (b, f, g) tie
    # and take the first class, Male: right for b and f, wrong for g; h lies on "man": wrong
    assert t.loc[("all", "all"), ["n", "correct"]].tolist() == [8, 6]
    assert t.loc[("race", "X"), ["n", "correct"]].tolist() == [4, 4]
    assert t.loc[("race", "Y"), ["n", "correct"]].tolist() == [4, 2]
    assert t.loc[("gender", "Female"), "accuracy"] == pytest.approx(2 / 4)
    lo, hi = t.loc[("race", "Y"), ["accuracy_low", "accuracy_high"]]
    assert lo < 0.5 < hi


def test_harmful_rates_per_group_by_hand():
    labels, emb = _world()
    t = zs.harmful_table(labels, emb, WordEncoder(), PROMPTS, "mini").set_index(["group_attribute", "group"])
    assert t.loc[("race", "Y"), ["n", "non_human", "crime_related"]].tolist() == [5, 2, 0]
    assert t.loc[("race", "X"), ["n", "non_human", "crime_related"]].tolist() == [4, 0, 1]
    assert t.loc[("all", "all"), "non_human_rate"] == pytest.approx(2 / 9)
    assert t.loc[("race", "Y"), "non_human_rate"] == pytest.approx(0.4)


def test_bad_prompts_are_named():
    labels, emb = _world()
    with pytest.raises(VlmbiasError, match="no prompts for attribute 'age'"):
        zs.accuracy_table(labels, emb, WordEncoder(), PROMPTS, ["age"])
    with pytest.raises(VlmbiasError, match="no label set 'table6'"):
        zs.harmful_table(labels, emb, WordEncoder(), PROMPTS, "table6")
    with pytest.raises(VlmbiasError, match=r"label\(s\) \['Other'\] have no prompt"):
        zs.accuracy_table(labels.assign(gender="Other"), emb, WordEncoder(), PROMPTS, ["gender"])
    assert "race" in zs.load_prompts({})  # the shipped FairFace preset


def test_worst_group_accuracy_and_gap_by_hand():
    labels, emb = _world()
    acc = zs.accuracy_table(labels, emb, WordEncoder(), PROMPTS, ["gender"])
    w = zs.worst_group_table(acc).set_index(["attribute", "group_attribute"])
    assert w.columns.tolist() == zs.WORST_GROUP_COLUMNS[4:]
    # race: X 4/4, Y 2/4 -> worst Y (0.5), gap 0.5
    r = w.loc[("gender", "race")]
    assert (r.worst_group, r.worst_n, r.worst_accuracy) == ("Y", 4, 0.5)
    assert (r.best_group, r.best_accuracy, r.gap) == ("X", 1.0, 0.5)
    assert r.worst_low < 0.5 < r.worst_high
    # gender by its own classes: Male 4/4, Female 2/4 (g and h wrong)
    g = w.loc[("gender", "gender")]
    assert (g.worst_group, g.worst_accuracy, g.gap, g.groups) == ("Female", 0.5, 0.5, 2)
    # a tie goes to the group name that sorts first; empty groups are left out
    tied = pd.DataFrame({"attribute": "a", "group_attribute": "b", "group": ["q", "p", "r"], "n": [2, 2, 0],
                         "correct": [1, 1, 0], "accuracy": [0.5, 0.5, np.nan], "accuracy_low": 0.1,
                         "accuracy_high": 0.9})
    t = zs.worst_group_table(tied).iloc[0]
    assert (t.worst_group, t.best_group, t.gap, t.groups) == ("p", "p", 0.0, 2)


def test_crop_column_is_not_a_group():
    labels, emb = _world()
    t = zs.accuracy_table(labels.assign(crop="0,0,4,4"), emb, WordEncoder(), PROMPTS, ["gender"])
    assert set(t["group_attribute"]) == {"all", "gender", "race"}
    # nor are SocialCounterfactuals' set id, set type and caption
    extra = labels.assign(counterfactual_set=[f"s{i}" for i in range(len(labels))], set_type="race-gender",
                          caption="A photo of a person")
    t = zs.accuracy_table(extra, emb, WordEncoder(), PROMPTS, ["gender"])
    assert set(t["group_attribute"]) == {"all", "gender", "race"}
