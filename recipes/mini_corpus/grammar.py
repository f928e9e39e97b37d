"""A home-assistant command grammar of our own, for SLURP-format and FSC-format mini corpora.

SLURP-format: each intent is a (scenario, action) pair with sentence templates whose slots
``{entity_type}`` are filled from ``ENTITY_VALUES``; an utterance carries the plain sentence,
the SLURP inline annotation (``wake me up at [time : seven am]``) and the entity list.

FSC-format: (action, object, location) slot triples, each with several paraphrases.

All sentences are lowercase words without punctuation or digits (as in SLURP). The phrases were
written for this project; none come from SLURP or Fluent Speech Commands. Every sampler is
deterministic for a seed.

Splits are kept apart: templates are held out per split (``split_templates``, ``fsc_commands``)
and sentences are compared by ``normalise`` (case, punctuation and filler openers ignored).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_SLOT = re.compile(r"\{([a-z_]+)\}")

SPLITS = ("train", "valid", "test")

FILLER_OPENERS = frozenset((
    "hey", "hi", "hello", "okay", "ok", "so", "right", "well", "now", "oh", "um", "uh", "and",
    "please", "siri", "olly", "ollie", "alexa", "google", "computer",
))
"""Words dropped from the start of a sentence by ``normalise`` (greetings, wake words, fillers)."""

FILLER_CLOSERS = frozenset(("please", "thanks", "now"))
"""Words dropped from the end of a sentence by ``normalise``."""


def normalise(sentence: str) -> str:
    """The comparison key of a sentence: lower case, letters and digits only (apostrophes
    dropped: ``what's`` -> ``whats``), without filler openers (``hey``, ``okay``, ``so``,
    ``please``, wake words...) and closers (``please``, ``thanks``, ``now``).

    Two sentences with the same key count as the same sentence when splits are kept apart.
    """
    words = re.sub(r"[^a-z0-9 ]+", " ", sentence.lower().replace("'", "")).split()
    start, end = 0, len(words)
    while start < end and words[start] in FILLER_OPENERS:
        start += 1
    while end > start and words[end - 1] in FILLER_CLOSERS:
        end -= 1
    return " ".join(words[start:end])

# ---------------------------------------------------------------------------------------------
# SLURP-format grammar

ENTITY_VALUES: dict[str, tuple[str, ...]] = {
    "house_place": ("kitchen", "living room", "bedroom", "hallway", "garage", "study",
                    "dining room", "basement"),
    "color_type": ("blue", "warm white", "green", "purple", "orange", "red"),
    "device_type": ("robot vacuum", "coffee maker", "smart plug", "fan", "dishwasher"),
    "time": ("seven am", "half past six", "nine thirty", "noon", "ten pm", "a quarter to eight"),
    "date": ("tomorrow", "monday", "this friday", "next week", "the weekend", "today"),
    "timeofday": ("morning", "afternoon", "evening", "tonight"),
    "place_name": ("london", "boston", "madrid", "tokyo", "seattle", "lisbon", "chicago"),
    "weather_descriptor": ("rain", "snow", "sunshine", "wind", "a storm"),
    "music_genre": ("jazz", "classical music", "rock", "reggae", "blues", "lo fi"),
    "artist_name": ("miles davis", "adele", "the beatles", "bob marley", "nina simone"),
    "radio_name": ("jazz fm", "the bbc world service", "classic radio", "the local station"),
    "podcast_name": ("science weekly", "the history hour", "tech talk", "daily brief"),
    "audiobook_name": ("moby dick", "pride and prejudice", "the hobbit", "dracula"),
    "event_name": ("dentist appointment", "team meeting", "lunch with sam", "yoga class",
                   "birthday party"),
    "person": ("anna", "david", "maria", "tom", "grandma", "lucas"),
    "relation": ("mom", "boss", "sister", "neighbour", "colleagues"),
    "list_name": ("shopping", "to do", "packing", "grocery"),
    "food_type": ("pizza", "sushi", "thai food", "burgers", "noodles"),
    "news_topic": ("sports", "politics", "technology", "business", "science"),
    "media_type": ("the bbc", "the local paper", "reuters"),
    "change_amount": ("a little", "ten percent", "a lot", "two steps"),
    "currency_name": ("euros", "dollars", "pounds", "yen", "swiss francs"),
    "definition_word": ("serendipity", "photosynthesis", "gravity", "democracy", "an atom"),
    "transport_type": ("train", "bus", "taxi", "flight"),
    "cooking_type": ("pancakes", "lasagna", "banana bread", "vegetable soup", "risotto"),
}
"""Fillers for each entity type (type names follow SLURP's entity inventory)."""


@dataclass(frozen=True)
class SlurpIntent:
    """One intent (``scenario_action``) and its sentence templates (``{type}`` marks a slot)."""

    scenario: str
    action: str
    templates: tuple[str, ...]

    @property
    def label(self) -> str:
        """The intent label, ``scenario + "_" + action``."""
        return f"{self.scenario}_{self.action}"


SLURP_INTENTS: tuple[SlurpIntent, ...] = (
    SlurpIntent("iot", "hue_lighton", (
        "switch on the lights in the {house_place}", "lights on in the {house_place}",
        "can you turn the {house_place} lights on", "i need some light in here",
        "brighten up the {house_place} by turning the lamps on")),
    SlurpIntent("iot", "hue_lightoff", (
        "turn the lights off in the {house_place}", "kill the lights",
        "switch off every lamp in the {house_place}", "lights off please",
        "make the {house_place} dark")),
    SlurpIntent("iot", "hue_lightdim", (
        "dim the {house_place} lights {change_amount}", "lower the brightness in here",
        "make the lights softer in the {house_place}", "the lights are too bright")),
    SlurpIntent("iot", "hue_lightchange", (
        "make the {house_place} lights {color_type}", "change the lamp colour to {color_type}",
        "set the lights to {color_type}", "i want {color_type} light in the {house_place}")),
    SlurpIntent("iot", "wemo_on", (
        "power up the {device_type}", "start the {device_type}",
        "switch the {device_type} on", "get the {device_type} running")),
    SlurpIntent("iot", "wemo_off", (
        "shut down the {device_type}", "stop the {device_type}",
        "switch the {device_type} off", "unplug the {device_type} please")),
    SlurpIntent("iot", "cleaning", (
        "vacuum the {house_place}", "send the robot to clean the {house_place}",
        "the floor is dirty start cleaning", "tidy up the {house_place} floor")),
    SlurpIntent("audio", "volume_up", (
        "make it louder", "turn the volume up {change_amount}", "i can barely hear it",
        "raise the sound", "louder please")),
    SlurpIntent("audio", "volume_down", (
        "make it quieter", "turn the volume down {change_amount}", "that is way too loud",
        "lower the sound", "softer please")),
    SlurpIntent("audio", "volume_mute", (
        "mute the speaker", "silence please", "be quiet for a moment", "no sound for now")),
    SlurpIntent("play", "music", (
        "play some {music_genre}", "put on a song by {artist_name}",
        "i want to listen to {artist_name}", "start playing {music_genre} in the {house_place}",
        "some {music_genre} would be nice")),
    SlurpIntent("play", "radio", (
        "tune in to {radio_name}", "put the radio on", "play {radio_name}",
        "switch to the radio station {radio_name}")),
    SlurpIntent("play", "podcasts", (
        "play the latest episode of {podcast_name}", "continue my podcast",
        "put on {podcast_name}", "any new episodes of {podcast_name}")),
    SlurpIntent("play", "audiobook", (
        "read me {audiobook_name}", "resume my audiobook",
        "continue reading {audiobook_name}", "start the audiobook {audiobook_name}")),
    SlurpIntent("alarm", "set", (
        "wake me up at {time}", "set an alarm for {time} {date}",
        "i need an alarm at {time}", "alarm at {time} please")),
    SlurpIntent("alarm", "query", (
        "what alarms do i have", "when is my alarm set for {date}",
        "is there an alarm for {time}", "list my alarms")),
    SlurpIntent("alarm", "remove", (
        "cancel my alarm for {time}", "delete the {date} alarm", "turn off all alarms",
        "remove the alarm at {time}")),
    SlurpIntent("weather", "query", (
        "what is the weather like in {place_name}", "will there be {weather_descriptor} {date}",
        "do i need an umbrella {date}", "how cold is it in {place_name} this {timeofday}",
        "tell me the forecast for {date}")),
    SlurpIntent("calendar", "set", (
        "add {event_name} to my calendar {date}", "schedule {event_name} at {time}",
        "remind me about {event_name} on {date}", "book {event_name} for {date} {timeofday}")),
    SlurpIntent("calendar", "query", (
        "what is on my calendar {date}", "am i free {date} {timeofday}",
        "when is my {event_name}", "do i have anything planned for {date}")),
    SlurpIntent("calendar", "remove", (
        "cancel {event_name}", "remove {event_name} from my calendar",
        "clear my schedule for {date}", "delete the {event_name} on {date}")),
    SlurpIntent("news", "query", (
        "what is new in {news_topic}", "give me the headlines",
        "read the latest {news_topic} news", "what does {media_type} say about {news_topic}")),
    SlurpIntent("datetime", "query", (
        "what time is it", "what is the date {date}", "what time is it in {place_name}",
        "which day is it today")),
    SlurpIntent("lists", "createoradd", (
        "add milk to my {list_name} list", "create a new {list_name} list",
        "put batteries on the {list_name} list", "start a {list_name} list for me")),
    SlurpIntent("lists", "query", (
        "what is on my {list_name} list", "read my {list_name} list",
        "how many items are on the {list_name} list", "show me my lists")),
    SlurpIntent("takeaway", "order", (
        "order some {food_type}", "i would like {food_type} delivered",
        "get me {food_type} for dinner", "place an order for {food_type}")),
    SlurpIntent("email", "sendemail", (
        "send an email to {person}", "write to my {relation}",
        "email {person} that i will be late", "reply to {person}")),
    SlurpIntent("email", "query", (
        "do i have new emails", "check my inbox", "any messages from {person}",
        "read my latest email")),
    SlurpIntent("transport", "ticket", (
        "book a {transport_type} ticket to {place_name}", "buy a ticket to {place_name} {date}",
        "i need a {transport_type} to {place_name}", "get me a seat on the {transport_type}")),
    SlurpIntent("qa", "currency", (
        "how many {currency_name} is one dollar", "convert fifty {currency_name} to euros",
        "what is the exchange rate for {currency_name}", "how much are {currency_name} worth")),
    SlurpIntent("qa", "definition", (
        "what does {definition_word} mean", "define {definition_word}",
        "explain {definition_word} to me", "what is the meaning of {definition_word}")),
    SlurpIntent("cooking", "recipe", (
        "how do i make {cooking_type}", "find a recipe for {cooking_type}",
        "what do i need for {cooking_type}", "show me how to cook {cooking_type}")),
    SlurpIntent("general", "joke", (
        "tell me a joke", "make me laugh", "do you know any funny stories",
        "say something funny")),
)
"""The SLURP-format intents (33 in 15 scenarios), grouped by scenario."""

_SLURP_PREFIXES = ("", "", "", "hey ", "okay ", "right ", "so ")
"""Optional openings (empty three times in seven) that fit any template."""


@dataclass(frozen=True)
class SlurpUtterance:
    """One SLURP-format sentence.

    Attributes:
        scenario: SLURP scenario (``iot``, ``alarm``...).
        action: SLURP action (``hue_lighton``, ``set``...).
        sentence: the plain lowercase sentence.
        annotation: the sentence with entities inline as ``[type : filler]``.
        entities: ``(type, filler)`` pairs in sentence order.
    """

    scenario: str
    action: str
    sentence: str
    annotation: str
    entities: tuple[tuple[str, str], ...]

    @property
    def intent(self) -> str:
        """The intent label, ``scenario + "_" + action``."""
        return f"{self.scenario}_{self.action}"


def _check_slots(template: str, where: str) -> None:
    """Raise if ``template`` uses an entity type missing from ``ENTITY_VALUES``."""
    for slot in _SLOT.findall(template):
        if slot not in ENTITY_VALUES:
            raise KeyError(f"{where}: template {template!r} uses unknown entity type {slot!r}")


def fill_template(template: str, rng: random.Random, prefix: str = "") -> SlurpUtterance:
    """Fill the ``{type}`` slots of ``template`` with random fillers after ``prefix``
    (scenario and action are left empty; ``sample_slurp`` sets them)."""
    _check_slots(template, "fill_template")
    entities: list[tuple[str, str]] = []

    def plain(match: re.Match) -> str:
        filler = rng.choice(ENTITY_VALUES[match.group(1)])
        entities.append((match.group(1), filler))
        return filler

    sentence = prefix + _SLOT.sub(plain, template)
    fillers = iter(entities)
    annotation = prefix + _SLOT.sub(lambda _: "[{} : {}]".format(*next(fillers)), template)
    return SlurpUtterance("", "", sentence, annotation, tuple(entities))


def slurp_intents(n_intents: int | None = None, seed: int = 0) -> list[SlurpIntent]:
    """Choose ``n_intents`` intents (all if None), spreading the choice over scenarios.

    The intents are shuffled with ``seed`` inside each scenario, then taken round-robin across
    scenarios, so small subsets still cover many scenarios. Returned in ``SLURP_INTENTS`` order.
    """
    if n_intents is None:
        return list(SLURP_INTENTS)
    if not 1 <= n_intents <= len(SLURP_INTENTS):
        raise ValueError(f"n_intents must be in 1..{len(SLURP_INTENTS)}, got {n_intents}")
    rng = random.Random(seed)
    by_scenario: dict[str, list[SlurpIntent]] = {}
    for intent in SLURP_INTENTS:
        by_scenario.setdefault(intent.scenario, []).append(intent)
    queues = [rng.sample(group, len(group)) for group in by_scenario.values()]
    rng.shuffle(queues)
    chosen: list[SlurpIntent] = []
    while len(chosen) < n_intents:
        for queue in queues:
            if queue and len(chosen) < n_intents:
                chosen.append(queue.pop())
    return [intent for intent in SLURP_INTENTS if intent in chosen]


def split_templates(
    intents: list[SlurpIntent], seed: int = 0, templates_per_intent: int | None = None
) -> dict[str, dict[str, tuple[str, ...]]]:
    """Hold templates out per split: for every intent one template is test's, one valid's and
    the rest (at least one) train's, so no valid or test sentence comes from a template seen in
    training.

    The first ``templates_per_intent`` templates of an intent (all if None, at least 3) are
    shuffled with ``seed``; templates with slots go to test and valid first (they give more
    distinct sentences than a fixed phrase).

    Returns:
        ``{split: {intent label: templates}}`` for ``SPLITS``.
    """
    if templates_per_intent is not None and templates_per_intent < 3:
        raise ValueError(f"templates_per_intent must be >= 3 (one held out for test, one for "
                         f"valid, the rest for train), got {templates_per_intent}")
    rng = random.Random(f"templates|{seed}")
    chosen: dict[str, dict[str, tuple[str, ...]]] = {split: {} for split in SPLITS}
    for intent in intents:
        templates = intent.templates[:templates_per_intent]
        if len(templates) < 3:
            raise ValueError(f"{intent.label}: {len(templates)} templates, 3 needed to hold "
                             f"some out")
        order = sorted(rng.sample(templates, len(templates)), key=lambda t: not _SLOT.search(t))
        chosen["test"][intent.label] = (order[0],)
        chosen["valid"][intent.label] = (order[1],)
        chosen["train"][intent.label] = tuple(order[2:])
    return chosen


def sample_slurp(
    n: int,
    seed: int = 0,
    intents: list[SlurpIntent] | None = None,
    templates: dict[str, tuple[str, ...]] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    max_tries: int = 20,
) -> list[SlurpUtterance]:
    """Draw ``n`` SLURP-format sentences, balanced over intents, distinct where possible.

    Intents are visited in a seed-shuffled round-robin, so each appears ``n // len(intents)``
    or one more times (all of them once ``n >= len(intents)``). Each draw picks a template,
    fillers and an optional opening. A sentence whose ``normalise`` key is in ``exclude`` is
    never returned (redrawn up to ``max_tries`` times, then an error); one already drawn here
    is redrawn up to ``max_tries`` times, then kept.

    Args:
        n: number of sentences.
        seed: random seed; same arguments, same list.
        intents: the intents to use (see ``slurp_intents``); None = all of ``SLURP_INTENTS``.
        templates: templates to use per intent label (see ``split_templates``); None = all.
        exclude: sentences (or their ``normalise`` keys) that must not be drawn, e.g. those of
            the other splits.
        max_tries: redraws allowed for an excluded or repeated sentence.

    Returns:
        list of ``n`` ``SlurpUtterance``.
    """
    intents = list(SLURP_INTENTS) if intents is None else intents
    if not intents:
        raise ValueError("sample_slurp: intents is empty")
    rng = random.Random(seed)
    blocked = {normalise(sentence) for sentence in exclude}
    seen: set[str] = set()
    utterances: list[SlurpUtterance] = []
    order: list[SlurpIntent] = []
    while len(utterances) < n:
        if not order:
            order = rng.sample(intents, len(intents))
        intent = order.pop()
        choices = intent.templates if templates is None else templates[intent.label]
        drawn = None
        for _ in range(max_tries):
            candidate = fill_template(rng.choice(choices), rng, rng.choice(_SLURP_PREFIXES))
            if normalise(candidate.sentence) in blocked:
                continue
            drawn = candidate
            if normalise(candidate.sentence) not in seen:
                break
        if drawn is None:
            raise ValueError(f"{intent.label}: every draw from {choices} is excluded")
        seen.add(normalise(drawn.sentence))
        utterances.append(SlurpUtterance(intent.scenario, intent.action, drawn.sentence,
                                         drawn.annotation, drawn.entities))
    return utterances


# ---------------------------------------------------------------------------------------------
# FSC-format grammar

FSC_ACTIONS: dict[str, tuple[str, ...]] = {
    "switch_on": ("switch on the {object}{location}", "power up the {object}{location}",
                  "i want the {object}{location} on", "get the {object}{location} going",
                  "{object}{location} on please"),
    "switch_off": ("switch off the {object}{location}", "power down the {object}{location}",
                   "i want the {object}{location} off", "shut the {object}{location} down",
                   "{object}{location} off please"),
    "raise": ("raise the {object}{location}", "push the {object}{location} up a bit",
              "turn the {object}{location} up", "can you bump up the {object}{location}",
              "the {object}{location} needs to go higher"),
    "lower": ("lower the {object}{location}", "bring the {object}{location} down a bit",
              "turn the {object}{location} down", "can you reduce the {object}{location}",
              "the {object}{location} needs to go lower"),
    "open": ("open the {object}{location}", "pull the {object}{location} open",
             "let some air in by opening the {object}{location}",
             "could you open up the {object}{location}", "{object}{location} open please"),
    "close": ("close the {object}{location}", "pull the {object}{location} shut",
              "shut the {object}{location}", "could you close up the {object}{location}",
              "{object}{location} closed please"),
}
"""FSC-format actions and their paraphrases (``{object}``, ``{location}`` slots)."""

FSC_OBJECTS: dict[str, tuple[str, ...]] = {
    "fan": ("switch_on", "switch_off", "raise", "lower"),
    "blinds": ("open", "close", "raise", "lower"),
    "window": ("open", "close"),
    "radiator": ("switch_on", "switch_off", "raise", "lower"),
    "speaker": ("switch_on", "switch_off", "raise", "lower"),
    "television": ("switch_on", "switch_off"),
    "gate": ("open", "close"),
}
"""FSC-format objects and the actions that make sense for each."""

FSC_LOCATIONS: tuple[str, ...] = ("none", "office", "nursery", "lounge", "attic")
"""FSC-format locations; ``none`` means the command names no location (as in FSC)."""


@dataclass(frozen=True)
class FscCommand:
    """One FSC-format (action, object, location) triple and its paraphrases per split.

    Attributes:
        phrases: ``{split: paraphrases}`` for ``SPLITS``; no paraphrase template of valid or
            test is used by train (see ``fsc_commands``).
    """

    action: str
    object: str
    location: str
    phrases: dict[str, tuple[str, ...]]

    @property
    def label(self) -> str:
        """The intent label, ``action_object_location``."""
        return f"{self.action}_{self.object}_{self.location}"


def _location_phrase(location: str) -> str:
    """How a location attaches to an object phrase (empty for ``none``)."""
    return "" if location == "none" else f" in the {location}"


def fsc_commands(
    n_intents: int | None = None, phrases_per_intent: int = 5, seed: int = 0
) -> list[FscCommand]:
    """Build ``n_intents`` FSC-format triples (all valid ones if None) with their paraphrases.

    The templates of each action are split once per seed: one is test's, one valid's, the
    other three train's, so a valid or test phrase never follows a template used in training.
    Each triple gets one test phrase, one valid phrase and ``phrases_per_intent - 2`` train
    phrases.

    Args:
        n_intents: number of (action, object, location) triples, chosen with ``seed``.
        phrases_per_intent: paraphrases per triple (3-5).
        seed: random seed; same arguments, same list.

    Returns:
        list of ``FscCommand`` sorted by label.
    """
    if not 3 <= phrases_per_intent <= 5:
        raise ValueError(f"phrases_per_intent must be in 3..5 (one held out for test, one for "
                         f"valid, the rest for train), got {phrases_per_intent}")
    rng = random.Random(seed)
    triples = [(action, obj, location) for obj, actions in FSC_OBJECTS.items()
               for action in actions for location in FSC_LOCATIONS]
    if n_intents is not None:
        if not 1 <= n_intents <= len(triples):
            raise ValueError(f"n_intents must be in 1..{len(triples)}, got {n_intents}")
        triples = rng.sample(triples, n_intents)
    held_out = {action: rng.sample(templates, len(templates))
                for action, templates in FSC_ACTIONS.items()}
    commands = []
    for action, obj, location in sorted(triples):
        test, valid, *train = held_out[action]
        by_split = {"train": rng.sample(train, phrases_per_intent - 2), "valid": [valid],
                    "test": [test]}
        phrases = {split: tuple(t.format(object=obj, location=_location_phrase(location))
                                for t in templates)
                   for split, templates in by_split.items()}
        commands.append(FscCommand(action, obj, location, phrases))
    return sorted(commands, key=lambda command: command.label)
