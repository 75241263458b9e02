"""Write ``src/expertrag/data/instructions/instructions.jsonl``: the project's own set of
instructions labelled by whether answering them needs retrieved knowledge (the critic's
Retrieve judgement).

No licence-clean instruction set can be had offline, so this one is written for expertrag
(CC0-1.0): templates by family, filled from small lists, each row
``{"text", "retrieve": bool, "family", "template"}``. The set mixes forms on both sides
(imperatives and questions that need facts; questions and imperatives that need none) so a
critic cannot learn "a question mark means retrieve". Deterministic; rerun after editing:

    python scripts/make_instructions.py
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/expertrag/data/instructions/instructions.jsonl"

TOPICS = ["the sea", "autumn leaves", "a lost key", "friendship", "a rainy Monday",
          "a cat who hates water", "the first snow", "a broken umbrella", "morning coffee",
          "a lighthouse", "moving to a new city", "a garden in spring", "an old bicycle",
          "learning to swim", "a quiet library", "a thunderstorm", "a birthday cake",
          "the night sky", "a busy kitchen", "a train journey"]
SENTENCES = ["me and him goes to the market every days", "The meeting was moved to Friday "
             "because the room was not free", "i think this plan is really really good",
             "The cat sat on the warm windowsill and watched the birds", "We should of left "
             "earlier to catch the bus", "The report, which was long, was read by nobody",
             "Please send me the files as soon as you can", "Our team won the game after a "
             "hard second half", "The soup is too salty and the bread is cold",
             "She has been working here for three years and loves it"]
PARAGRAPHS = [
    "Our office will close early on Friday so that staff can attend the summer party. "
    "Please finish urgent work by noon and lock the cabinets before you leave.",
    "The new bus timetable starts next week. Buses will run every ten minutes at rush hour "
    "and every twenty minutes in the evening.",
    "Tom baked bread for the first time. The loaf was flat, but it tasted good, and he "
    "plans to try again with more yeast.",
    "The team meeting covered three points: the budget is on track, the website launch is "
    "delayed by a week, and two new people join in May.",
    "I bought a lamp online. It arrived quickly, but the switch broke after two days and "
    "the seller has not answered my emails.",
]
REVIEWS = ["The food was cold and the waiter ignored us.", "Best concert I have been to in "
           "years!", "The phone works, but the battery barely lasts a day.", "Lovely hotel, "
           "friendly staff, great breakfast.", "I waited two hours and nobody called me back."]
LISTS = ["42, 7, 19, 3, 88", "pear, apple, mango, banana", "12, 5, 31, 8", "zebra, ant, cat, dog",
         "3.5, 1.2, 9.9, 0.4"]
EVENTS = ["a birthday party", "a team lunch", "a picnic", "a school fair", "a weekend trip",
          "a book club meeting", "a wedding toast", "a farewell dinner"]
SKILLS = ["study for an exam", "sleep better", "keep a plant alive", "save money each month",
          "start running", "write a clear email", "prepare for a job interview",
          "stay focused at work", "cook for a crowd", "learn to draw"]
CODE = ["reverses a string", "checks whether a number is prime", "counts the vowels in a "
        "word", "returns the largest item of a list", "removes duplicates from a list",
        "adds up the numbers from 1 to n", "turns Celsius into Fahrenheit"]
FEELINGS = ["a bit tired", "excited about tomorrow", "nervous about my exam", "bored",
            "happy today", "stressed about work"]

# knowledge the critic cannot have without documents: named entities of many kinds
PEOPLE = ["Ada Lovelace", "Nelson Mandela", "Marie Curie", "Akira Kurosawa", "Frida Kahlo",
          "Alan Turing", "Wangari Maathai", "Yuri Gagarin", "Clara Schumann", "Ibn Battuta"]
PLACES = ["Lake Titicaca", "the city of Tbilisi", "the Atacama Desert", "Reykjavik",
          "the Danube", "Zanzibar", "the Faroe Islands", "Kyoto", "Patagonia", "Timbuktu"]
ORGS = ["the Red Cross", "UNESCO", "the Hanseatic League", "the Bauhaus school",
        "the Nobel Foundation", "the European Space Agency", "Interpol", "the BBC"]
WORKS = ["the novel Things Fall Apart", "the film Rashomon", "the opera Carmen",
         "the painting Guernica", "the album Kind of Blue", "the play Death of a Salesman"]
THINGS = ["the printing press", "penicillin", "the telephone", "the bicycle",
          "the first vaccine", "the steam locomotive", "the World Wide Web"]

NO = {  # family -> templates (fields in braces are filled from the lists above)
    "creative": ["Write a short poem about {topic}.", "Write a haiku about {topic}.",
                 "Tell me a funny story about {topic}.", "Write a limerick about {topic}.",
                 "Can you write two lines of song lyrics about {topic}?",
                 "Describe {topic} in three vivid sentences.", "Invent a slogan about {topic}."],
    "rewrite": ["Fix the grammar of this sentence: \"{sentence}\"",
                "Rewrite this in a formal tone: \"{sentence}\"",
                "Make this sentence shorter: \"{sentence}\"",
                "Turn this sentence into a question: \"{sentence}\"",
                "Rewrite this sentence in the passive voice: \"{sentence}\"",
                "Could you make this sound friendlier? \"{sentence}\""],
    "summarise": ["Summarise this in one sentence: {paragraph}",
                  "What is the main point of this text? {paragraph}",
                  "List the key facts in this note: {paragraph}",
                  "Give this paragraph a title: {paragraph}"],
    "classify": ["Is this review positive or negative? \"{review}\"",
                 "What is the mood of this message: \"{review}\"",
                 "Rate the tone of this comment from 1 to 5: \"{review}\""],
    "arithmetic": ["What is {a} plus {b}?", "What is {a} times {b}?", "Subtract {b} from {a}.",
                   "If I have {a} apples and give away {b}, how many are left?",
                   "What is {b} percent of {a}?", "Divide {ab} by {b}.",
                   "Is {a} an even number?", "Add {a}, {b} and {c}."],
    "lists": ["Sort these from smallest to largest: {items}.",
              "Put these words in alphabetical order: {items}.",
              "How many items are in this list: {items}?",
              "Which is the largest of these: {items}?"],
    "advice": ["Give me three ideas for {event}.", "How can I {skill}?",
               "What are some tips to {skill}?", "Suggest a plan to {skill} in a week.",
               "What should I bring to {event}?"],
    "coding": ["Write a Python function that {code}.", "Explain how to write a loop that {code}.",
               "Write pseudocode for a program that {code}."],
    "chat": ["Hi! How are you today?", "Thanks a lot for your help!", "Good morning!",
             "I'm feeling {feeling}.", "Can you cheer me up? I'm {feeling}.",
             "What can you help me with?", "Tell me a joke.", "Let's play a word game.",
             "Say something nice to me.", "Goodbye, talk to you later!"],
    "reasoning": ["If all {x}s are animals and Rex is a {x}, is Rex an animal?",
                  "Which is heavier, a kilogram of {m1} or a kilogram of {m2}?",
                  "If today is {day}, what day is it in two days?",
                  "Tom is taller than Ann and Ann is taller than Bo. Who is shortest?"],
}
YES = {
    "biography": ["Who was {person}?", "Tell me about the life of {person}.",
                  "Give a short biography of {person}.", "When was {person} born?",
                  "What is {person} best known for?", "Where did {person} grow up?"],
    "place": ["Where is {place}?", "Tell me about {place}.", "Describe the history of {place}.",
              "What is the population of {place}?", "Which country is {place} in?"],
    "organisation": ["When was {org} founded?", "Who founded {org}?",
                     "Explain what {org} does.", "Where is {org} based?"],
    "work": ["Who created {work}?", "When did {work} first appear?",
             "Summarise the plot of {work}.", "What awards did {work} win?"],
    "history": ["Who invented {thing}?", "When was {thing} invented?",
                "Explain the history of {thing}.", "In which country did {thing} first appear?"],
}
WORDS = {"x": ["dog", "cat", "horse"], "m1": ["feathers", "iron"], "m2": ["bricks", "cotton"],
         "day": ["Monday", "Thursday", "Saturday"]}


def _fill(template: str, rng: random.Random) -> str:
    a, b, c = rng.randint(11, 99), rng.randint(2, 19), rng.randint(3, 40)
    values = {"topic": rng.choice(TOPICS), "sentence": rng.choice(SENTENCES),
              "paragraph": rng.choice(PARAGRAPHS), "review": rng.choice(REVIEWS),
              "items": rng.choice(LISTS), "event": rng.choice(EVENTS),
              "skill": rng.choice(SKILLS), "code": rng.choice(CODE),
              "feeling": rng.choice(FEELINGS), "person": rng.choice(PEOPLE),
              "place": rng.choice(PLACES), "org": rng.choice(ORGS), "work": rng.choice(WORKS),
              "thing": rng.choice(THINGS), "a": a, "b": b, "c": c, "ab": a * b,
              **{k: rng.choice(v) for k, v in WORDS.items()}}
    return template.format(**values)


def build(per_template: int = 6, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for retrieve, families in ((False, NO), (True, YES)):
        for family, templates in families.items():
            for t, template in enumerate(templates):
                for _ in itertools.repeat(None, per_template * 3):
                    text = _fill(template, rng)
                    if text in seen:
                        continue
                    seen.add(text)
                    rows.append({"text": text, "retrieve": retrieve, "family": family,
                                 "template": f"{family}-{t}"})
                    if sum(r["template"] == f"{family}-{t}" for r in rows) >= per_template:
                        break
    return rows


def main() -> None:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.replace(OUT)
    n_yes = sum(r["retrieve"] for r in rows)
    print(f"wrote {len(rows)} instructions ({n_yes} need retrieval) to {OUT}")


if __name__ == "__main__":
    main()
