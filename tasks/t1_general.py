"""T1 general: instruction following with automatically verifiable constraints (IFEval style).

A prompt asks for a short text about a topic under one to three constraints (format, casing, keywords, length, ...).
The target is written from a pool of plain factual sentences per topic and shaped to satisfy the constraints; every
target is checked by the same checkers that score model outputs (``tasks.constraints``) before it is kept.
Validation and test prompts use topics never seen in training.
"""
from __future__ import annotations

import json
import random

from tasks import constraints

TOPICS: dict[str, list[str]] = {
    "the water cycle": [
        "Water evaporates from oceans, lakes and rivers when the sun heats it.",
        "The vapour rises, cools and condenses into clouds.",
        "Clouds release the water again as rain, snow or hail.",
        "Rivers carry much of that water back to the sea.",
        "Some water soaks into the ground and becomes groundwater.",
        "Plants also return water to the air through their leaves."],
    "honey bees": [
        "Honey bees live in colonies ruled by a single queen.",
        "Worker bees collect nectar and pollen from flowers.",
        "They turn nectar into honey and store it in wax combs.",
        "Bees tell each other where food is with a waggle dance.",
        "By moving pollen between flowers they help many crops grow.",
        "A strong colony can hold tens of thousands of bees."],
    "the moon": [
        "The moon is the only natural satellite of the Earth.",
        "It takes about twenty-seven days to orbit our planet.",
        "Its gravity drives the rise and fall of the tides.",
        "The same side of the moon always faces the Earth.",
        "Astronauts first walked on its surface in 1969.",
        "Its craters were made by ancient impacts."],
    "volcanoes": [
        "A volcano is an opening in the crust where molten rock escapes.",
        "Molten rock below the surface is called magma.",
        "Once it reaches the surface it is called lava.",
        "Many volcanoes sit along the edges of tectonic plates.",
        "Eruptions can throw ash high into the atmosphere.",
        "Volcanic soil is often very fertile."],
    "photosynthesis": [
        "Photosynthesis is how plants make food from light.",
        "Leaves capture sunlight with a green pigment called chlorophyll.",
        "Plants take in carbon dioxide from the air.",
        "They combine it with water to make sugar.",
        "Oxygen is released as a by-product.",
        "Almost all life on land depends on this process."],
    "the human heart": [
        "The heart is a muscle that pumps blood around the body.",
        "It has four chambers: two atria and two ventricles.",
        "Blood carries oxygen and nutrients to every cell.",
        "An adult heart beats about seventy times a minute at rest.",
        "Regular exercise keeps the heart strong.",
        "Valves stop the blood from flowing backwards."],
    "recycling": [
        "Recycling turns used materials into new products.",
        "Paper, glass, metal and some plastics can be recycled.",
        "It saves raw materials and energy.",
        "Sorting waste at home makes recycling easier.",
        "Recycled aluminium needs far less energy than new aluminium.",
        "Less waste also means smaller landfills."],
    "the internet": [
        "The internet is a global network of connected computers.",
        "Data travels across it in small packets.",
        "Routers pass those packets from network to network.",
        "The web is one service that runs on the internet.",
        "Email and video calls use it as well.",
        "Common protocols let very different machines talk to each other."],
    "chess": [
        "Chess is a strategy game for two players.",
        "Each player starts with sixteen pieces.",
        "The goal is to checkmate the opposing king.",
        "The queen is the most powerful piece on the board.",
        "Openings, middlegames and endgames each need different skills.",
        "Players often study famous games to improve."],
    "rainforests": [
        "Rainforests are dense forests that receive heavy rain.",
        "They are home to more than half of the world's species.",
        "Tall trees form a canopy high above the ground.",
        "Many medicines come from rainforest plants.",
        "Rainforests store huge amounts of carbon.",
        "Logging and farming threaten large areas of them."],
    "electric cars": [
        "Electric cars run on batteries instead of petrol.",
        "An electric motor turns stored energy into motion.",
        "They produce no exhaust fumes while driving.",
        "Drivers recharge them at home or at public stations.",
        "Braking can send energy back into the battery.",
        "Battery prices have fallen a great deal in recent years."],
    "sleep": [
        "Sleep lets the body and brain recover.",
        "Adults usually need seven to nine hours a night.",
        "During deep sleep the body repairs tissue.",
        "Dreams happen mostly during REM sleep.",
        "Too little sleep harms memory and mood.",
        "A regular bedtime helps people sleep better."],
    "the printing press": [
        "The printing press was developed in Europe around 1440.",
        "It used movable metal type to print pages quickly.",
        "Books became cheaper and more common.",
        "Ideas spread faster than ever before.",
        "Literacy rose as more people could buy books.",
        "Newspapers later grew out of the same technology."],
    "coral reefs": [
        "Coral reefs are built by tiny animals called polyps.",
        "They grow in warm, shallow and clear seas.",
        "Reefs shelter a quarter of all marine species.",
        "They protect coasts from waves and storms.",
        "Warmer water can cause corals to bleach.",
        "Healthy reefs also support fishing and tourism."],
    "bicycles": [
        "A bicycle is a two-wheeled vehicle powered by pedals.",
        "A chain carries the force of the pedals to the rear wheel.",
        "Gears help riders climb hills.",
        "Cycling is cheap and produces no pollution.",
        "Many cities now build separate bike lanes.",
        "Regular cycling improves fitness."],
    "the solar system": [
        "The solar system has eight planets that orbit the sun.",
        "Mercury is the planet closest to the sun.",
        "Jupiter is the largest planet.",
        "Saturn is famous for its bright rings.",
        "The asteroid belt lies between Mars and Jupiter.",
        "Comets come from the cold outer edges of the system."],
    "vaccines": [
        "Vaccines train the immune system to recognise a germ.",
        "They often contain a weakened or inactive part of that germ.",
        "The body then makes antibodies without getting sick.",
        "Vaccination has wiped out smallpox.",
        "When many people are vaccinated diseases spread less.",
        "Some vaccines need booster doses."],
    "the Roman Empire": [
        "The Roman Empire once ruled lands around the Mediterranean Sea.",
        "Its roads connected distant provinces.",
        "Roman engineers built aqueducts to carry water into cities.",
        "Latin, the language of Rome, shaped many modern languages.",
        "Roman law influenced legal systems for centuries.",
        "The western half of the empire fell in 476."],
    "deserts": [
        "Deserts are places that receive very little rain.",
        "Some deserts are hot while others are cold.",
        "Plants such as cacti store water in their stems.",
        "Many desert animals are active only at night.",
        "Sand dunes are shaped by the wind.",
        "The Sahara is the largest hot desert."],
    "bread baking": [
        "Bread is made from flour, water, salt and yeast.",
        "Yeast produces gas that makes the dough rise.",
        "Kneading develops gluten and gives bread its structure.",
        "The dough rests before it is shaped.",
        "Baking sets the crumb and browns the crust.",
        "Sourdough uses wild yeast instead of packaged yeast."],
    "wind power": [
        "Wind turbines turn moving air into electricity.",
        "The wind spins large blades connected to a generator.",
        "Wind farms are built on hills, plains and at sea.",
        "Wind power produces no greenhouse gases while running.",
        "Output changes with the strength of the wind.",
        "Batteries and grids help balance that variation."],
    "libraries": [
        "Libraries lend books to the public for free.",
        "Many also offer computers and internet access.",
        "Librarians help people find reliable information.",
        "Children often attend reading programmes there.",
        "Some libraries keep rare and historical documents.",
        "Digital collections let readers borrow e-books."],
    "earthquakes": [
        "Earthquakes happen when rocks suddenly slip along a fault.",
        "The energy travels through the ground as seismic waves.",
        "Seismometers record the shaking.",
        "Strong earthquakes can damage buildings and roads.",
        "Engineers design flexible structures to resist them.",
        "Undersea earthquakes can cause tsunamis."],
    "music": [
        "Music is sound arranged in time.",
        "Melody, harmony and rhythm are its basic parts.",
        "Every culture in the world makes music.",
        "Instruments produce sound by vibrating.",
        "Learning an instrument trains memory and patience.",
        "Recorded music can be shared across the world in seconds."],
    "glaciers": [
        "Glaciers are huge masses of ice that move slowly.",
        "They form where more snow falls than melts.",
        "Moving glaciers carve valleys and lakes.",
        "They hold most of the fresh water on Earth.",
        "Many glaciers are shrinking as the climate warms.",
        "Meltwater from glaciers feeds rivers in summer."],
    "tea": [
        "Tea is made by pouring hot water over dried leaves.",
        "All true tea comes from the Camellia sinensis plant.",
        "Green and black tea differ in how the leaves are processed.",
        "Tea has been drunk in China for thousands of years.",
        "It contains caffeine, though less than coffee.",
        "Many countries have their own tea traditions."],
    "maps": [
        "A map is a drawing of an area seen from above.",
        "A scale shows how distances on the map match real distances.",
        "A legend explains the symbols used.",
        "Lines of latitude and longitude locate places on Earth.",
        "Satellite images make modern maps very accurate.",
        "Navigation apps update maps in real time."],
    "octopuses": [
        "Octopuses are soft-bodied animals with eight arms.",
        "They can change colour to hide from predators.",
        "Octopuses are known for solving puzzles.",
        "They have three hearts and blue blood.",
        "Suckers on their arms can taste what they touch.",
        "Most octopuses live only one or two years."],
}
EVAL_TOPICS = ["glaciers", "tea", "maps", "octopuses"]  # validation and test topics, never in training
ASKS = ["Write a short text about {topic}.", "Explain {topic} to a curious student.", "Describe {topic}.",
        "Tell me the key facts about {topic}.", "Give a brief overview of {topic}."]
END_PHRASES = ["Is there anything else I can help with?", "Thanks for reading.", "That is all."]
# Modifiers that a format mode cannot satisfy together with its own shape.
INCOMPATIBLE = {"json": ("no_commas", "title", "end_phrase", "uppercase", "sentence_count"),
                "bullets": ("sentence_count",), "paragraphs": ("sentence_count",)}
MODIFIERS = ["lowercase", "uppercase", "keywords", "forbidden", "no_commas", "end_phrase", "title", "word_range",
             "sentence_count"]


def _shape(rng: random.Random, topic: str, mode: str, picks: list[str], modifiers: list[str]) -> tuple[list[dict], str]:
    """Constraints and a target that satisfies them."""
    cons: list[dict] = []
    if "no_commas" in modifiers:
        picks = [s.replace(",", "") for s in picks]
        cons.append({"type": "no_commas"})
    if "keywords" in modifiers:
        vocabulary = sorted({w.lower() for s in picks for w in constraints.words(s) if len(w) > 5})
        cons.append({"type": "keywords", "words": rng.sample(vocabulary, min(2, len(vocabulary)))})
    if "forbidden" in modifiers:
        used = {w.lower() for s in picks for w in constraints.words(s)}
        cons.append({"type": "forbidden", "words": [w for w in ("very", "really", "basically", "actually") if w not in used][:2]})
    if mode == "bullets":
        body = "\n".join(f"* {s}" for s in picks)
        cons.append({"type": "bullets", "n": len(picks)})
    elif mode == "paragraphs":
        half = len(picks) // 2
        body = " ".join(picks[:half]) + "\n\n***\n\n" + " ".join(picks[half:])
        cons.append({"type": "paragraphs", "n": 2})
    elif mode == "json":
        body = json.dumps({"topic": topic, "facts": picks}, indent=2)
        cons.append({"type": "json"})
    else:
        body = " ".join(picks)
    if "title" in modifiers:
        body = f"<<{topic.title()}>>\n\n{body}"
        cons.append({"type": "title"})
    if "end_phrase" in modifiers:
        phrase = rng.choice(END_PHRASES)
        body = f"{body}\n\n{phrase}"
        cons.append({"type": "end_phrase", "phrase": phrase})
    if "lowercase" in modifiers:
        body = body.lower()
        cons.append({"type": "lowercase"})
    elif "uppercase" in modifiers:
        body = body.upper()
        cons.append({"type": "uppercase"})
    if "sentence_count" in modifiers:  # counted on the final text, title and closing phrase included
        cons.append({"type": "sentence_count", "n": len(constraints.sentences(body))})
    if "word_range" in modifiers:
        count = len(constraints.words(body))
        cons.append({"type": "word_range", "min": max(1, count - rng.randint(5, 15)), "max": count + rng.randint(5, 20)})
    for c in cons:
        if c["type"] == "end_phrase" and c["phrase"] not in body:  # casing changed the phrase: keep it as written
            c["phrase"] = body.strip().splitlines()[-1]
    return cons, body


def generate(count: int, seed: int, split: str = "train") -> list[dict]:
    """``count`` distinct prompts; train uses the training topics, val/test the held-out EVAL_TOPICS."""
    rng = random.Random(f"{seed}-{split}")
    topics = [t for t in TOPICS if (t in EVAL_TOPICS) == (split != "train")]
    records, seen, attempts = [], set(), 0
    while len(records) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"cannot draw {count} distinct T1 prompts from {len(topics)} topics")
        topic = rng.choice(topics)
        mode = rng.choice(["plain", "plain", "bullets", "paragraphs", "json"])
        picks = rng.sample(TOPICS[topic], rng.randint(3 if mode == "paragraphs" else 2, 5))
        allowed = [m for m in MODIFIERS if m not in INCOMPATIBLE.get(mode, ())]
        modifiers = rng.sample(allowed, rng.randint(0 if mode != "plain" else 1, 2))
        cons, target = _shape(rng, topic, mode, picks, modifiers)
        cons = [c for c in cons if c.get("words", True)]  # an empty keyword list constrains nothing
        if not cons:
            continue
        instruction = rng.choice(ASKS).format(topic=topic) + " " + " ".join(constraints.describe(c) for c in cons)
        if instruction in seen:
            continue
        failed = [c["type"] for c in cons if not constraints.check(c, target)]
        if failed:
            raise ValueError(f"T1 target for {instruction!r} fails its own constraints {failed}")
        seen.add(instruction)
        records.append(dict(instruction=instruction, input="", output=target, constraints=cons, topic=topic))
    return records


def build(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    held_out = generate(sizes["val"] + sizes["test"] + 20, seed, split="eval")
    return {"train": generate(sizes["train"] + 20, seed, split="train"), "val": held_out[:sizes["val"]],
            "test": held_out[sizes["val"]:]}
