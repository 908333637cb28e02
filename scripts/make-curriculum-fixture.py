#!/usr/bin/env python3
"""Reference difficulties for ds's legacy curriculum_learning (tests/test_config.c).

Restates DeepSpeed's CurriculumScheduler (deepspeed/runtime/data_pipeline/
curriculum_scheduler.py, legacy top-level "curriculum_learning"): get_difficulty
for fixed_linear / fixed_root / fixed_discrete and update_difficulty, which the
engine calls with global_steps + 1 before each training forward and which
stops changing once the difficulty has reached max_difficulty.

Writes tests/fixtures/curriculum.tsv: one line per config, the block as JSON,
a tab, then the difficulties of optimizer steps 1..STEPS as update_difficulty
gives them starting from min_difficulty.  Python's float arithmetic is C's
double arithmetic, so the C test compares exactly.

    python3 scripts/make-curriculum-fixture.py [OUT]
"""
import json
import math
import os
import sys

STEPS = 40


class CurriculumScheduler:
    def __init__(self, c):
        self.min = c["min_difficulty"]
        self.max = c["max_difficulty"]
        self.cur = c["min_difficulty"]
        self.type = c["schedule_type"]
        self.s = c["schedule_config"]

    def get_difficulty(self, global_steps):
        if self.type == "fixed_discrete":
            if global_steps > self.s["max_step"][-1]:
                return self.s["difficulty"][-1]
            for i in range(len(self.s["max_step"])):
                if global_steps <= self.s["max_step"][i]:
                    return self.s["difficulty"][i]
        root = 1 if self.type == "fixed_linear" else self.s["root_degree"]
        d = (float(global_steps) / self.s["total_curriculum_step"]) ** (1.0 / root)
        d = math.floor(d * (self.max - self.min) + self.min)
        d -= d % self.s["difficulty_step"]
        return min(d, self.max)

    def update_difficulty(self, global_steps):
        if self.cur < self.max:
            self.cur = self.get_difficulty(global_steps)
        return self.cur


CONFIGS = [
    # the real config in tests/data/dsconfigs/bmds-tests__ds_config_cl.json
    {"min_difficulty": 8, "max_difficulty": 128, "schedule_type": "fixed_linear",
     "schedule_config": {"total_curriculum_step": 30, "difficulty_step": 4}},
    # a min that is not a multiple of the step: rounded below min (a DeepSpeed quirk)
    {"min_difficulty": 10, "max_difficulty": 64, "schedule_type": "fixed_linear",
     "schedule_config": {"total_curriculum_step": 25, "difficulty_step": 8}},
    # a max that is not a multiple either: held below it until the root passes 1
    {"min_difficulty": 16, "max_difficulty": 100, "schedule_type": "fixed_root",
     "schedule_config": {"total_curriculum_step": 20, "difficulty_step": 8, "root_degree": 2}},
    {"min_difficulty": 8, "max_difficulty": 512, "schedule_type": "fixed_root",
     "schedule_config": {"total_curriculum_step": 33, "difficulty_step": 16, "root_degree": 3}},
    {"min_difficulty": 4, "max_difficulty": 32, "schedule_type": "fixed_discrete",
     "schedule_config": {"difficulty": [4, 8, 16, 32], "max_step": [3, 7, 20]}},
    # a discrete schedule that goes down after its max: update_difficulty stops at max
    {"min_difficulty": 8, "max_difficulty": 24, "schedule_type": "fixed_discrete",
     "schedule_config": {"difficulty": [8, 24, 16], "max_step": [5, 9]}},
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "curriculum.tsv")
    with open(out, "w") as f:
        for c in CONFIGS:
            s = CurriculumScheduler(c)
            seq = [s.update_difficulty(g + 1) for g in range(STEPS)]
            block = dict(enabled=True, curriculum_type="seqlen", **c)
            f.write(json.dumps(block, sort_keys=True) + "\t" + " ".join(str(d) for d in seq) + "\n")
    print("wrote %s (%d configs, %d steps each)" % (out, len(CONFIGS), STEPS))


if __name__ == "__main__":
    main()
