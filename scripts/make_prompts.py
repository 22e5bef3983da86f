"""Generate sppo_nemo/assets/prompts.jsonl, the built-in prompt set: ``python scripts/make_prompts.py``.

Deterministic (standard library, one ``random.Random(1234)``): reruns write the same bytes. Each row
is a question answerable in one or two sentences, with a concise ideal ``reference`` reply (for the
embedding-similarity judge) and a checkable ``answer`` (a number in digits or a key word, matched as
a number or a whole word), or null for open-ended prompts. All facts come from the tables below.
Rows are shuffled per category and interleaved, so every slice of the file is a representative mix.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

SEED = 1234
OUT = Path(__file__).resolve().parent.parent / "sppo_nemo" / "assets" / "prompts.jsonl"

NAMES = ["Tom", "Anna", "Maria", "Sam", "Lily", "Ben", "Omar", "Priya", "Jack", "Emma", "Leo", "Mia"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "oranges", "stamps",
         "balloons", "cards"]

# ----------------------------------------------------------------------------- arithmetic
BARE = {
    "+": (["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
           "What do you get when you add {a} to {b}?", "Calculate {a} plus {b}."],
          "{a} + {b} = {c}."),
    "-": (["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?",
           "How much is {a} take away {b}?", "Calculate the difference between {a} and {b}."],
          "{a} - {b} = {c}."),
    "*": (["What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?",
           "Calculate {a} x {b}.", "What is {a} multiplied by {b}?"],
          "{a} times {b} is {c}."),
    "/": (["What is {a} divided by {b}?", "Divide {a} by {b}.", "How many times does {b} go into {a}?",
           "Calculate {a} / {b}."],
          "{a} divided by {b} is {c}."),
}
BARE_COUNTS = {"+": 14, "-": 12, "*": 14, "/": 8}

WORD_PROBLEMS = [  # (prompt, reference, operation)
    ("{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", "{name} now has {c} {item}.", "+"),
    ("A basket holds {a} {item}. Someone adds {b} more. How many {item} are in the basket now?",
     "The basket now holds {c} {item}.", "+"),
    ("A class has {a} boys and {b} girls. How many students are in the class?", "There are {c} students in the class.", "+"),
    ("A bus has {a} passengers. At the next stop, {b} more get on. How many passengers are on the bus now?",
     "There are now {c} passengers on the bus.", "+"),
    ("{name} had {a} {item} and gave {b} of them to a friend. How many {item} does {name} have left?",
     "{name} has {c} {item} left.", "-"),
    ("There were {a} {item} on the table and {b} were taken away. How many {item} are still on the table?",
     "There are {c} {item} still on the table.", "-"),
    ("{name} has {a} dollars and spends {b} dollars on lunch. How many dollars are left?",
     "{name} has {c} dollars left.", "-"),
    ("There are {a} bags with {b} {item} in each bag. How many {item} are there in total?",
     "There are {c} {item} in total.", "*"),
    ("{name} buys {a} packs of {item}, and each pack has {b}. How many {item} does {name} buy?",
     "{name} buys {c} {item} in total.", "*"),
    ("{name} reads {a} pages every day for {b} days. How many pages does {name} read in total?",
     "{name} reads {c} pages in total.", "*"),
    ("{name} walks {a} kilometers every day. How many kilometers does {name} walk in {b} days?",
     "{name} walks {c} kilometers in {b} days.", "*"),
    ("{a} {item} are shared equally among {b} friends. How many {item} does each friend get?",
     "Each friend gets {c} {item}.", "/"),
]
WORD_PROBLEM_COUNT = 30

SHAPES = [  # fixed math facts: (prompt, reference, answer)
    ("How many sides does a triangle have?", "A triangle has 3 sides.", "3"),
    ("How many sides does a pentagon have?", "A pentagon has 5 sides.", "5"),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides.", "6"),
    ("How many sides does an octagon have?", "An octagon has 8 sides.", "8"),
    ("How many degrees are in a right angle?", "A right angle measures 90 degrees.", "90"),
    ("What do the angles of a triangle add up to, in degrees?", "The angles of a triangle add up to 180 degrees.", "180"),
    ("How many degrees are in a full circle?", "A full circle has 360 degrees.", "360"),
    ("What is half of 50?", "Half of 50 is 25.", "25"),
    ("What is double 35?", "Double 35 is 70.", "70"),
    ("What is 10 squared?", "10 squared is 100.", "100"),
]


def operands(rng: random.Random, op: str, small: bool) -> tuple[int, int, int]:
    """(a, b, c) with c = a op b exact, all positive, and c different from a and b."""
    while True:
        if op == "+":
            a, b = (rng.randint(3, 40), rng.randint(2, 30)) if small else (rng.randint(11, 89), rng.randint(11, 89))
            c = a + b
        elif op == "-":
            a = rng.randint(9, 45) if small else rng.randint(20, 99)
            b = rng.randint(2, a - 3)
            c = a - b
        elif op == "*":
            a, b = rng.randint(2, 9), rng.randint(3, 12)
            c = a * b
        else:
            c, b = rng.randint(2, 9), rng.randint(2, 8)
            a = b * c
        if c not in (a, b):
            return a, b, c


def gen_arithmetic(rng: random.Random) -> list[tuple[str, str, str]]:
    rows = []
    for op, n in BARE_COUNTS.items():
        templates, ref = BARE[op]
        used = set()  # no two bare problems with the same operands
        while len(used) < n:
            a, b, c = operands(rng, op, small=False)
            if (a, b) in used:
                continue
            used.add((a, b))
            rows.append((rng.choice(templates).format(a=a, b=b), ref.format(a=a, b=b, c=c), str(c)))
    for _ in range(WORD_PROBLEM_COUNT):
        prompt, ref, op = rng.choice(WORD_PROBLEMS)
        a, b, c = operands(rng, op, small=True)
        kw = dict(a=a, b=b, c=c, name=rng.choice(NAMES), item=rng.choice(ITEMS))
        rows.append((prompt.format(**kw), ref.format(**kw), str(c)))
    return rows + SHAPES


# ----------------------------------------------------------------------------- unit conversions
CONVERSIONS = [  # (big unit, small unit, small units per big unit, range of big-unit counts)
    ("kilometers", "meters", 1000, (2, 20)),
    ("hours", "minutes", 60, (2, 12)),
    ("minutes", "seconds", 60, (2, 15)),
    ("kilograms", "grams", 1000, (2, 20)),
    ("weeks", "days", 7, (2, 12)),
    ("meters", "centimeters", 100, (2, 20)),
    ("liters", "milliliters", 1000, (2, 10)),
    ("days", "hours", 24, (2, 10)),
    ("years", "months", 12, (2, 10)),
    ("feet", "inches", 12, (2, 10)),
    ("centimeters", "millimeters", 10, (2, 30)),
]
PER_DIRECTION = 3
CONVERT_TEMPLATES = ["How many {to} are in {n} {frm}?", "Convert {n} {frm} to {to}.",
                     "{n} {frm} is equal to how many {to}?", "Express {n} {frm} in {to}.",
                     "How many {to} make up {n} {frm}?"]
CONVERT_REF = "{n} {frm} is equal to {ans} {to}."
DOZEN = [("How many eggs are in {n} dozen?", "{n} dozen eggs is {ans} eggs."),
         ("How many items are in {n} dozen?", "{n} dozen is {ans} items."),
         ("If you buy {n} dozen donuts, how many donuts do you have?", "{n} dozen donuts is {ans} donuts.")]
UNIT_FACTS = [
    ("How many days are in a week?", "There are 7 days in a week.", "7"),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "60"),
    ("How many seconds are in an hour?", "There are 3600 seconds in an hour.", "3600"),
    ("How many hours are in a day?", "There are 24 hours in a day.", "24"),
    ("How many months are in a year?", "There are 12 months in a year.", "12"),
    ("How many centimeters are in a meter?", "There are 100 centimeters in a meter.", "100"),
    ("How many grams are in a kilogram?", "There are 1000 grams in a kilogram.", "1000"),
    ("How many meters are in a kilometer?", "There are 1000 meters in a kilometer.", "1000"),
    ("How many years are in a century?", "A century is 100 years.", "100"),
    ("How many years are in a decade?", "A decade is 10 years.", "10"),
    ("How many inches are in a foot?", "There are 12 inches in a foot.", "12"),
    ("How many days are in a leap year?", "A leap year has 366 days.", "366"),
    ("How many items are in a dozen?", "A dozen is 12 items.", "12"),
    ("How many days are in a normal, non-leap year?", "A normal year has 365 days.", "365"),
]


def gen_units(rng: random.Random) -> list[tuple[str, str, str]]:
    rows = []
    for big, small, f, (lo, hi) in CONVERSIONS:
        for n in rng.sample(range(lo, hi + 1), 2 * PER_DIRECTION):
            if len(rows) % 2 == 0:  # big -> small
                kw = dict(n=n, frm=big, to=small, ans=n * f)
            else:  # small -> big
                kw = dict(n=n * f, frm=small, to=big, ans=n)
            rows.append((rng.choice(CONVERT_TEMPLATES).format(**kw), CONVERT_REF.format(**kw), str(kw["ans"])))
    for n in rng.sample(range(2, 11), 4):
        prompt, ref = rng.choice(DOZEN)
        rows.append((prompt.format(n=n), ref.format(n=n, ans=12 * n), str(12 * n)))
    return rows + UNIT_FACTS


# ----------------------------------------------------------------------------- geography
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("the United Kingdom", "London"), ("Ireland", "Dublin"),
    ("Belgium", "Brussels"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
    ("Russia", "Moscow"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("South Korea", "Seoul"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("the Philippines", "Manila"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Australia", "Canberra"),
    ("New Zealand", "Wellington"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Turkey", "Ankara"), ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"), ("Nepal", "Kathmandu"),
    ("Venezuela", "Caracas"), ("Uruguay", "Montevideo"), ("Ecuador", "Quito"), ("Senegal", "Dakar"),
    ("Jamaica", "Kingston"), ("Malaysia", "Kuala Lumpur"), ("Cambodia", "Phnom Penh"),
    ("the United States", "Washington"),
]
CAPITAL_COUNT = 32
CAPITAL_TEMPLATES = ["What is the capital of {c}?", "Which city is the capital of {c}?",
                     "Name the capital city of {c}.", "What city serves as the capital of {c}?",
                     "Tell me the capital of {c}."]
CAPITAL_REF = "The capital of {c} is {ans}."

CONTINENTS = [
    ("France", "Europe"), ("Germany", "Europe"), ("Italy", "Europe"), ("Spain", "Europe"),
    ("Norway", "Europe"), ("Poland", "Europe"), ("Greece", "Europe"), ("Brazil", "South America"),
    ("Argentina", "South America"), ("Peru", "South America"), ("Chile", "South America"),
    ("Colombia", "South America"), ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"),
    ("Morocco", "Africa"), ("Ethiopia", "Africa"), ("Japan", "Asia"), ("China", "Asia"),
    ("India", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"), ("Nepal", "Asia"),
    ("Canada", "North America"), ("Mexico", "North America"), ("the United States", "North America"),
]
CONTINENT_COUNT = 14
CONTINENT_TEMPLATES = ["On which continent is {c}?", "Which continent is {c} located in?",
                       "{C} is part of which continent?", "Name the continent where {c} is found."]
CONTINENT_REF = "{C} is located in {ans}."

CITIES = [
    ("Sydney", "Australia"), ("Toronto", "Canada"), ("Barcelona", "Spain"), ("Mumbai", "India"),
    ("Istanbul", "Turkey"), ("Rio de Janeiro", "Brazil"), ("Munich", "Germany"), ("Milan", "Italy"),
    ("Osaka", "Japan"), ("Shanghai", "China"), ("Marseille", "France"), ("Cape Town", "South Africa"),
    ("Vancouver", "Canada"), ("Melbourne", "Australia"), ("Casablanca", "Morocco"),
    ("Alexandria", "Egypt"), ("Lagos", "Nigeria"), ("Geneva", "Switzerland"), ("Venice", "Italy"),
    ("Kyoto", "Japan"), ("Hamburg", "Germany"), ("Seville", "Spain"),
]
CITY_COUNT = 10
CITY_TEMPLATES = ["In which country is the city of {c}?", "Which country is {c} in?",
                  "{C} is a city in which country?", "Name the country where the city of {c} is located."]
CITY_REF = "{C} is a city in {ans}."

GEO_FACTS = [
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.", "Pacific"),
    ("Which is the largest continent by area?", "Asia is the largest continent by area.", "Asia"),
    ("What is the smallest continent?", "Australia is the smallest continent.", "Australia"),
    ("What is the coldest continent?", "Antarctica is the coldest continent on Earth.", "Antarctica"),
    ("What is the highest mountain above sea level?", "Mount Everest is the highest mountain above sea level.", "Everest"),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa.", "Nile"),
    ("What is the longest river in South America?", "The Amazon is the longest river in South America.", "Amazon"),
    ("What is the largest hot desert in the world?", "The Sahara is the largest hot desert in the world.", "Sahara"),
    ("Which ocean lies between Europe and North America?",
     "The Atlantic Ocean lies between Europe and North America.", "Atlantic"),
    ("How many continents are there?", "There are 7 continents on Earth.", "7"),
    ("What is the largest country in the world by area?", "Russia is the largest country in the world by area.", "Russia"),
    ("What is the largest country in South America by area?", "Brazil is the largest country in South America.", "Brazil"),
    ("In which city is the Eiffel Tower?", "The Eiffel Tower is in Paris, France.", "Paris"),
    ("In which city is the Statue of Liberty?", "The Statue of Liberty is in New York City.", "New York"),
    ("In which city is the Colosseum?", "The Colosseum is in Rome, Italy.", "Rome"),
    ("In which city is Big Ben?", "Big Ben is in London, England.", "London"),
    ("In which country is the Taj Mahal?", "The Taj Mahal is in India.", "India"),
    ("In which country is Machu Picchu?", "Machu Picchu is in Peru.", "Peru"),
    ("In which country are the Pyramids of Giza?", "The Pyramids of Giza are in Egypt.", "Egypt"),
    ("In which country is Mount Kilimanjaro?", "Mount Kilimanjaro is in Tanzania.", "Tanzania"),
    ("Off the coast of which country is the Great Barrier Reef?",
     "The Great Barrier Reef lies off the coast of Australia.", "Australia"),
    ("In which country is Mount Fuji?", "Mount Fuji is in Japan.", "Japan"),
    ("In which country is the Great Wall?", "The Great Wall is in China.", "China"),
    ("Which country is often called the Land of the Rising Sun?",
     "Japan is often called the Land of the Rising Sun.", "Japan"),
    ("Which European country is shaped like a boot?", "Italy is the country shaped like a boot.", "Italy"),
    ("Which U.S. state is made up entirely of islands in the Pacific Ocean?",
     "Hawaii is the U.S. state made up entirely of Pacific islands.", "Hawaii"),
    ("What is the largest U.S. state by area?", "Alaska is the largest U.S. state by area.", "Alaska"),
    ("Which river flows through Paris?", "The Seine flows through Paris.", "Seine"),
    ("Which river flows through London?", "The Thames flows through London.", "Thames"),
    ("What is the largest island in the world?", "Greenland is the largest island in the world.", "Greenland"),
    ("What is the tallest waterfall in the world?",
     "Angel Falls in Venezuela is the tallest waterfall in the world.", "Angel Falls"),
    ("What imaginary line divides Earth into the Northern and Southern Hemispheres?",
     "The equator divides Earth into the Northern and Southern Hemispheres.", "equator"),
]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def from_table(rng, table, count, templates, ref):
    rows = []
    for c, ans in rng.sample(table, count):
        kw = dict(c=c, C=cap(c), ans=ans)
        rows.append((rng.choice(templates).format(**kw), ref.format(**kw), ans))
    return rows


def gen_geography(rng: random.Random) -> list[tuple[str, str, str]]:
    return (from_table(rng, CAPITALS, CAPITAL_COUNT, CAPITAL_TEMPLATES, CAPITAL_REF)
            + from_table(rng, CONTINENTS, CONTINENT_COUNT, CONTINENT_TEMPLATES, CONTINENT_REF)
            + from_table(rng, CITIES, CITY_COUNT, CITY_TEMPLATES, CITY_REF) + GEO_FACTS)


# ----------------------------------------------------------------------------- science
SCIENCE_FACTS = [
    ("What is the chemical formula for water?", "The chemical formula for water is H2O.", "H2O"),
    ("Write the chemical formula of carbon dioxide.", "Carbon dioxide has the chemical formula CO2.", "CO2"),
    ("What is the chemical formula of table salt?", "Table salt is sodium chloride, NaCl.", "NaCl"),
    ("What is the chemical formula for methane?", "The chemical formula for methane is CH4.", "CH4"),
    ("Give the chemical formula of ammonia.", "The chemical formula of ammonia is NH3.", "NH3"),
    ("What is the chemical formula of glucose?", "Glucose has the chemical formula C6H12O6.", "C6H12O6"),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.", "Jupiter"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.", "Mercury"),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.", "Mars"),
    ("Which planet is best known for its bright, wide rings?", "Saturn is best known for its bright rings.", "Saturn"),
    ("Which planet is the hottest in our solar system?", "Venus is the hottest planet in our solar system.", "Venus"),
    ("Which planet is farthest from the Sun?", "Neptune is the planet farthest from the Sun.", "Neptune"),
    ("How many planets are in our solar system?", "There are 8 planets in our solar system.", "8"),
    ("What is the third planet from the Sun?", "Earth is the third planet from the Sun.", "Earth"),
    ("What is the name of Earth's natural satellite?", "Earth's natural satellite is the Moon.", "Moon"),
    ("What star is at the center of our solar system?", "The Sun is the star at the center of our solar system.", "Sun"),
    ("At what temperature in degrees Celsius does water boil at sea level?",
     "Water boils at 100 degrees Celsius at sea level.", "100"),
    ("At what temperature in degrees Celsius does water freeze?", "Water freezes at 0 degrees Celsius.", "0"),
    ("At what temperature in degrees Fahrenheit does water freeze?", "Water freezes at 32 degrees Fahrenheit.", "32"),
    ("What is the boiling point of water in degrees Fahrenheit at sea level?",
     "Water boils at 212 degrees Fahrenheit at sea level.", "212"),
    ("What is the freezing point of water in kelvin?", "Water freezes at 273.15 kelvin.", "273.15"),
    ("How many legs does an insect have?", "An insect has 6 legs.", "6"),
    ("How many legs does a spider have?", "A spider has 8 legs.", "8"),
    ("How many arms does an octopus have?", "An octopus has 8 arms.", "8"),
    ("How many hearts does an octopus have?", "An octopus has 3 hearts.", "3"),
    ("How many bones are in the adult human body?", "The adult human body has 206 bones.", "206"),
    ("How many chambers does the human heart have?", "The human heart has 4 chambers: two atria and two ventricles.", "4"),
    ("How many teeth does a typical adult human have, including wisdom teeth?",
     "A typical adult has 32 teeth, including the wisdom teeth.", "32"),
    ("How many chromosomes do humans normally have?", "Humans normally have 46 chromosomes.", "46"),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body.", "skin"),
    ("Which organ pumps blood around the body?", "The heart pumps blood around the body.", "heart"),
    ("Which organ controls the body and lets you think?", "The brain controls the body and lets you think.", "brain"),
    ("Which gas do humans need to breathe in to survive?", "Humans need to breathe in oxygen to survive.", "oxygen"),
    ("Which gas do plants take in from the air for photosynthesis?",
     "Plants take in carbon dioxide from the air for photosynthesis.", "carbon dioxide"),
    ("Which gas makes up most of Earth's atmosphere?", "Nitrogen makes up most of Earth's atmosphere, about 78 percent.", "nitrogen"),
    ("Which element is the Sun mostly made of?", "The Sun is made mostly of hydrogen.", "hydrogen"),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance.", "diamond"),
    ("What process do plants use to make food from sunlight?", "Plants make food from sunlight by photosynthesis.", "photosynthesis"),
    ("Which part of the cell is called the powerhouse of the cell?",
     "The mitochondria are called the powerhouse of the cell.", "mitochondria"),
    ("What force pulls objects toward the Earth?", "Gravity is the force that pulls objects toward the Earth.", "gravity"),
    ("What is the largest animal on Earth?", "The blue whale is the largest animal on Earth.", "blue whale"),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal.", "cheetah"),
    ("What is the tallest animal in the world?", "The giraffe is the tallest animal in the world.", "giraffe"),
    ("What is the largest bird in the world?", "The ostrich is the largest bird in the world.", "ostrich"),
    ("What do bees make from nectar?", "Bees make honey from nectar.", "honey"),
    ("What is a baby frog called?", "A baby frog is called a tadpole.", "tadpole"),
    ("What is a young cat called?", "A young cat is called a kitten.", "kitten"),
    ("What is a young dog called?", "A young dog is called a puppy.", "puppy"),
    ("What is an animal that eats only plants called?", "An animal that eats only plants is called a herbivore.", "herbivore"),
    ("What is an animal that eats only meat called?", "An animal that eats only meat is called a carnivore.", "carnivore"),
    ("What is an animal that eats both plants and meat called?",
     "An animal that eats both plants and meat is called an omnivore.", "omnivore"),
    ("Which vitamin does your skin make when exposed to sunlight?",
     "Your skin makes vitamin D when it is exposed to sunlight.", "vitamin D"),
    ("Which blood cells carry oxygen around the body?", "Red blood cells carry oxygen around the body.", "red"),
    ("What is the unit of electrical resistance?", "The unit of electrical resistance is the ohm.", "ohm"),
    ("What is the SI unit of force?", "The SI unit of force is the newton.", "newton"),
    ("What is the SI unit of power?", "The SI unit of power is the watt.", "watt"),
    ("What is the SI unit of electric current?", "The SI unit of electric current is the ampere.", "ampere"),
    ("What is the SI base unit of mass?", "The SI base unit of mass is the kilogram.", "kilogram"),
    ("What is the center of an atom called?", "The center of an atom is called the nucleus.", "nucleus"),
    ("Which particle in an atom has a negative charge?", "The electron carries a negative charge.", "electron"),
    ("Which particle in an atom has a positive charge?", "The proton carries a positive charge.", "proton"),
    ("Which particle in an atom has no electric charge?", "The neutron has no electric charge.", "neutron"),
    ("What is the pH of pure water at room temperature?", "Pure water has a pH of 7 at room temperature.", "7"),
    ("How many colors are traditionally listed in a rainbow?",
     "A rainbow is traditionally described as having 7 colors.", "7"),
    ("What is the atomic number of hydrogen?", "Hydrogen has the atomic number 1.", "1"),
    ("What is the atomic number of helium?", "Helium has the atomic number 2.", "2"),
    ("What is the atomic number of carbon?", "Carbon has the atomic number 6.", "6"),
    ("What is the atomic number of oxygen?", "Oxygen has the atomic number 8.", "8"),
    ("Which metal is liquid at room temperature?", "Mercury is the metal that is liquid at room temperature.", "mercury"),
    ("What is it called when water vapor cools and turns into liquid water?",
     "When water vapor cools into liquid water, it is called condensation.", "condensation"),
    ("What instrument do scientists use to see tiny cells?", "Scientists use a microscope to see tiny cells.", "microscope"),
    ("What instrument do astronomers use to observe distant stars?",
     "Astronomers use a telescope to observe distant stars.", "telescope"),
    ("What is the path of a planet around the Sun called?", "The path of a planet around the Sun is called its orbit.", "orbit"),
    ("What is the layer of gases surrounding Earth called?", "The layer of gases surrounding Earth is the atmosphere.", "atmosphere"),
    ("What do you call a scientist who studies rocks?", "A scientist who studies rocks is called a geologist.", "geologist"),
]
ELEMENTS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"),
            ("sodium", "Na"), ("zinc", "Zn"), ("tin", "Sn"), ("calcium", "Ca"), ("chlorine", "Cl")]
TO_SYMBOL = (["What is the chemical symbol for {e}?", "Which chemical symbol stands for {e}?",
              "Give the chemical symbol of {e}."], "The chemical symbol for {e} is {s}.")
TO_ELEMENT = (["Which element has the chemical symbol {s}?", "What element does the symbol {s} stand for?",
               "Name the element with the symbol {s}."], "{s} is the chemical symbol for {e}.")


def gen_science(rng: random.Random) -> list[tuple[str, str, str]]:
    rows = list(SCIENCE_FACTS)
    for i, (e, s) in enumerate(rng.sample(ELEMENTS, len(ELEMENTS))):
        templates, ref = TO_SYMBOL if i % 2 == 0 else TO_ELEMENT
        rows.append((rng.choice(templates).format(e=e, s=s), cap(ref.format(e=e, s=s)), s if i % 2 == 0 else e))
    return rows


# ----------------------------------------------------------------------------- language
ANTONYMS = [
    ("hot", "cold"), ("up", "down"), ("day", "night"), ("happy", "sad"), ("fast", "slow"), ("wet", "dry"),
    ("early", "late"), ("full", "empty"), ("true", "false"), ("push", "pull"), ("above", "below"),
    ("inside", "outside"), ("north", "south"), ("east", "west"), ("always", "never"),
    ("buy", "sell"), ("high", "low"), ("rich", "poor"), ("thick", "thin"), ("strong", "weak"),
    ("first", "last"), ("friend", "enemy"), ("increase", "decrease"), ("maximum", "minimum"),
    ("entrance", "exit"), ("love", "hate"), ("asleep", "awake"), ("visible", "invisible"),
    ("summer", "winter"), ("remember", "forget"), ("sunrise", "sunset"), ("top", "bottom"),
    ("floor", "ceiling"), ("cheap", "expensive"), ("clean", "dirty"), ("wide", "narrow"),
    ("deep", "shallow"), ("guilty", "innocent"), ("import", "export"), ("lend", "borrow"),
    ("positive", "negative"), ("vertical", "horizontal"), ("ascend", "descend"), ("inhale", "exhale"),
    ("include", "exclude"), ("majority", "minority"), ("interior", "exterior"), ("arrival", "departure"),
    ("alive", "dead"), ("win", "lose"), ("plus", "minus"), ("heavy", "light"), ("dark", "light"), ("noisy", "quiet"), ("ancient", "modern"),
    ("float", "sink"), ("laugh", "cry"), ("smooth", "rough"),
]
PLURALS = [
    ("child", "children"), ("mouse", "mice"), ("goose", "geese"), ("tooth", "teeth"), ("foot", "feet"),
    ("man", "men"), ("woman", "women"), ("person", "people"), ("ox", "oxen"), ("knife", "knives"),
    ("leaf", "leaves"), ("wolf", "wolves"), ("half", "halves"), ("box", "boxes"), ("city", "cities"),
    ("baby", "babies"), ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("bus", "buses"),
    ("church", "churches"), ("wife", "wives"), ("life", "lives"), ("loaf", "loaves"), ("shelf", "shelves"),
    ("thief", "thieves"), ("fox", "foxes"), ("party", "parties"), ("story", "stories"), ("dish", "dishes"),
    ("crisis", "crises"), ("phenomenon", "phenomena"), ("criterion", "criteria"), ("berry", "berries"),
    ("glass", "glasses"), ("watch", "watches"),
]
PAST_TENSES = [
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("see", "saw"), ("write", "wrote"), ("swim", "swam"),
    ("take", "took"), ("buy", "bought"), ("think", "thought"), ("teach", "taught"), ("catch", "caught"),
    ("bring", "brought"), ("fly", "flew"), ("drink", "drank"), ("sing", "sang"), ("begin", "began"),
    ("speak", "spoke"), ("break", "broke"), ("drive", "drove"), ("choose", "chose"), ("freeze", "froze"),
    ("forget", "forgot"), ("give", "gave"), ("know", "knew"), ("grow", "grew"), ("throw", "threw"),
    ("sleep", "slept"), ("keep", "kept"), ("feel", "felt"), ("leave", "left"), ("make", "made"),
    ("sell", "sold"), ("tell", "told"), ("find", "found"), ("stand", "stood"), ("win", "won"),
    ("sit", "sat"), ("fall", "fell"), ("ride", "rode"),
]
FORMS = [  # (prompt, reference, answer) for comparatives and superlatives
    ("What is the comparative form of \"good\"?", "The comparative form of \"good\" is \"better\".", "better"),
    ("What is the superlative form of \"good\"?", "The superlative form of \"good\" is \"best\".", "best"),
    ("What is the comparative form of \"bad\"?", "The comparative form of \"bad\" is \"worse\".", "worse"),
    ("What is the superlative form of \"bad\"?", "The superlative form of \"bad\" is \"worst\".", "worst"),
    ("What is the comparative form of \"big\"?", "The comparative form of \"big\" is \"bigger\".", "bigger"),
    ("What is the comparative form of \"happy\"?", "The comparative form of \"happy\" is \"happier\".", "happier"),
    ("What is the superlative form of \"easy\"?", "The superlative form of \"easy\" is \"easiest\".", "easiest"),
]
LETTER_WORDS = ["elephant", "banana", "computer", "mountain", "umbrella", "library", "giraffe", "chocolate",
                "butterfly", "pencil", "orange", "garden", "window", "rainbow", "kitchen", "dinosaur",
                "strawberry", "adventure", "keyboard", "blanket", "village", "planet", "tiger", "music",
                "island", "pyramid", "volcano", "journey", "weather", "notebook", "cat", "friendship"]
LANGUAGE_TASKS = {  # name -> (table, count, templates, reference)
    "antonym": (ANTONYMS, 26, ["What is the opposite of \"{w}\"?", "Give the antonym of the word \"{w}\".",
                               "What word means the opposite of \"{w}\"?", "Name the opposite of \"{w}\" in one word."],
                "The opposite of \"{w}\" is \"{ans}\"."),
    "plural": (PLURALS, 20, ["What is the plural of \"{w}\"?", "Give the plural form of \"{w}\".",
                             "Write the plural of the word \"{w}\".", "What do you call more than one {w}?"],
               "The plural of \"{w}\" is \"{ans}\"."),
    "past": (PAST_TENSES, 20, ["What is the past tense of \"{w}\"?", "Give the simple past form of the verb \"{w}\".",
                               "Write the past tense of the verb \"to {w}\".", "What is the simple past of \"{w}\"?"],
             "The past tense of \"{w}\" is \"{ans}\"."),
    "letters": ([(w, str(len(w))) for w in LETTER_WORDS], 16,
                ["How many letters are in the word \"{w}\"?", "Count the letters in the word \"{w}\".",
                 "How many letters does \"{w}\" have?", "The word \"{w}\" has how many letters?"],
                "The word \"{w}\" has {ans} letters."),
}


def gen_language(rng: random.Random) -> list[tuple[str, str, str]]:
    rows = []
    for table, count, templates, ref in LANGUAGE_TASKS.values():
        for w, ans in rng.sample(table, count):
            rows.append((rng.choice(templates).format(w=w), ref.format(w=w, ans=ans), ans))
    return rows + FORMS


# ----------------------------------------------------------------------------- open-ended
OPEN = [  # (prompt, reference); answer is null
    ("Give one tip for better sleep.", "Keep a consistent sleep schedule by going to bed and waking up at the same time every day."),
    ("Define photosynthesis in one sentence.", "Photosynthesis is the process by which plants use sunlight, water, and carbon dioxide to make sugar and release oxygen."),
    ("What is a noun?", "A noun is a word that names a person, place, thing, or idea."),
    ("What is a verb?", "A verb is a word that describes an action or a state, such as \"run\" or \"be\"."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as \"blue\" or \"tall\"."),
    ("What is an adverb?", "An adverb is a word that modifies a verb, adjective, or another adverb, such as \"quickly\"."),
    ("What is a pronoun?", "A pronoun is a word that takes the place of a noun, such as \"he\", \"she\", or \"it\"."),
    ("Suggest one way to save water at home.", "Turn off the tap while you brush your teeth to save water."),
    ("Why is exercise good for you?", "Regular exercise strengthens your heart and muscles, improves your mood, and lowers the risk of disease."),
    ("Give one tip for staying focused while studying.", "Put your phone away and study in short, focused sessions with regular breaks."),
    ("What is gravity?", "Gravity is the force that pulls objects with mass toward each other, such as toward the Earth."),
    ("Explain what a prime number is.", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
    ("How can I reduce stress?", "You can reduce stress by exercising, sleeping enough, and taking time to breathe deeply and relax."),
    ("Give one tip for writing a good email.", "Keep the email short and clear, with a specific subject line and a polite greeting."),
    ("Suggest a healthy breakfast.", "A bowl of oatmeal with fresh fruit and a glass of milk makes a healthy breakfast."),
    ("Describe the water cycle in one sentence.", "Water evaporates, condenses into clouds, falls as rain or snow, and collects in rivers and oceans before evaporating again."),
    ("What is democracy?", "Democracy is a system of government in which citizens choose their leaders by voting."),
    ("Why do we have seasons?", "We have seasons because Earth's axis is tilted, so each hemisphere gets more direct sunlight at different times of the year."),
    ("What is a habitat?", "A habitat is the natural home or environment where a plant or animal lives."),
    ("Give one tip for saving money.", "Set a monthly budget and move a fixed amount into savings as soon as you get paid."),
    ("What is recycling?", "Recycling is turning used materials like paper, glass, and plastic into new products."),
    ("Why should you wash your hands?", "Washing your hands removes germs and helps prevent the spread of illness."),
    ("What is an ecosystem?", "An ecosystem is a community of living things interacting with each other and their environment."),
    ("Suggest a name for a pet goldfish.", "You could name your goldfish Bubbles."),
    ("What is a metaphor?", "A metaphor describes something by saying it is something else, as in \"time is a thief\"."),
    ("What is a simile?", "A simile compares two things using \"like\" or \"as\", such as \"as brave as a lion\"."),
    ("Give one tip for learning a new language.", "Practice a little every day, for example by talking with native speakers or using flashcards."),
    ("What is the purpose of a budget?", "A budget helps you plan your spending and saving so you do not spend more than you earn."),
    ("What is inflation?", "Inflation is the general rise in prices over time, which reduces what money can buy."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element, made of protons, neutrons, and electrons."),
    ("Explain evaporation briefly.", "Evaporation is the process by which a liquid turns into a gas, like water drying in the sun."),
    ("Why is the sky blue?", "The sky looks blue because air molecules scatter blue sunlight more than other colors."),
    ("What does a doctor do?", "A doctor diagnoses and treats illnesses and injuries to help people stay healthy."),
    ("Give one tip for crossing the street safely.", "Look both ways and cross at a crosswalk only when the traffic has stopped."),
    ("How can I be a good listener?", "Give the speaker your full attention, avoid interrupting, and ask questions to show you understand."),
    ("What is a computer program?", "A computer program is a set of instructions that tells a computer what to do."),
    ("What is the internet?", "The internet is a global network of computers that lets people share information and communicate."),
    ("Give one reason to read books.", "Reading books expands your knowledge and vocabulary and strengthens your imagination."),
    ("What is a volcano?", "A volcano is an opening in the Earth's crust through which molten rock, ash, and gases erupt."),
    ("What causes an earthquake?", "An earthquake is caused by the sudden movement of rocks along faults in the Earth's crust."),
    ("Suggest one healthy snack.", "An apple with a handful of nuts is a healthy snack."),
    ("What is friendship?", "Friendship is a close relationship between people who care about, trust, and support each other."),
    ("How can I stay hydrated during the day?", "Carry a water bottle and drink water regularly throughout the day."),
    ("What is a synonym?", "A synonym is a word that means the same or nearly the same as another word."),
    ("What is an antonym?", "An antonym is a word with the opposite meaning of another word, like \"hot\" and \"cold\"."),
    ("What is climate change?", "Climate change is the long-term shift in Earth's temperatures and weather patterns, largely caused by burning fossil fuels."),
    ("Give one tip for a job interview.", "Research the company beforehand and prepare clear examples of your skills."),
    ("What is a fraction?", "A fraction represents part of a whole, written as one number over another, like 1/2."),
    ("What is the job of the heart?", "The heart pumps blood through the body, delivering oxygen and nutrients to the cells."),
    ("What do plants need to grow?", "Plants need sunlight, water, air, and nutrients from the soil to grow."),
    ("Why is sleep important?", "Sleep lets the body and brain rest and recover, which supports memory, mood, and health."),
    ("What is a sentence?", "A sentence is a group of words that expresses a complete thought, usually with a subject and a verb."),
    ("Give one tip for keeping your room tidy.", "Put things back in their place right after you use them."),
    ("What is a mammal?", "A mammal is a warm-blooded animal with hair or fur that feeds its young with milk."),
    ("What is a reptile?", "A reptile is a cold-blooded animal with scaly skin, such as a snake, lizard, or turtle."),
    ("What is electricity?", "Electricity is a form of energy carried by moving electric charges, used to power lights and devices."),
    ("Explain what a password is for.", "A password is a secret word or phrase that protects your accounts from unauthorized access."),
    ("How do I create a strong password?", "Use a long password that mixes letters, numbers, and symbols, and do not reuse it elsewhere."),
    ("What is kindness?", "Kindness is being friendly, generous, and considerate toward others."),
    ("How can I make new friends?", "Join clubs or activities you enjoy and start conversations with people who share your interests."),
    ("What is a map used for?", "A map shows the layout of an area and helps people find places and plan routes."),
    ("What is history?", "History is the study of past events and the people who took part in them."),
    ("Give one tip for public speaking.", "Practice your speech several times beforehand and speak slowly and clearly."),
    ("Describe a rainbow in one sentence.", "A rainbow is an arc of colors in the sky that appears when sunlight shines through raindrops."),
    ("What is an election?", "An election is a formal process in which people vote to choose leaders or decide issues."),
    ("Name one benefit of walking every day.", "Walking every day improves heart health and helps you keep a healthy weight."),
    ("What is a library?", "A library is a place where books and other resources are kept for people to read or borrow."),
    ("What is pollution?", "Pollution is the contamination of air, water, or land by harmful substances."),
    ("How should I cook rice on the stove?", "Rinse the rice, add the right amount of water, and simmer it covered until the water is absorbed."),
    ("What is a hypothesis?", "A hypothesis is a testable prediction or explanation that scientists check with experiments."),
    ("What is an experiment?", "An experiment is a test carried out under controlled conditions to check a hypothesis."),
    ("Why do leaves change color in autumn?", "In autumn trees stop making green chlorophyll, which reveals the yellow and orange pigments in the leaves."),
    ("How does a vaccine work?", "A vaccine trains the immune system to recognize and fight a specific disease."),
    ("What is a planet?", "A planet is a large, round body that orbits a star and has cleared its orbit of other objects."),
    ("Suggest one way to reduce plastic waste.", "Carry a reusable shopping bag and water bottle instead of using disposable plastic ones."),
    ("What is teamwork?", "Teamwork is people working together and cooperating to reach a shared goal."),
    ("Give one tip for managing your time.", "Make a to-do list each morning and tackle the most important task first."),
    ("What is a poem?", "A poem is a piece of writing that uses rhythm, imagery, and often rhyme to express feelings or ideas."),
    ("What is gratitude?", "Gratitude is the feeling of being thankful and appreciating what you have."),
    ("How do bees help plants?", "Bees carry pollen from flower to flower, pollinating plants so they can make seeds and fruit."),
    ("What is a fossil?", "A fossil is the preserved remains or trace of an ancient plant or animal, usually found in rock."),
    ("Give one way to be more environmentally friendly.", "Walk, cycle, or take public transport instead of driving when you can."),
    ("What is a good way to start a conversation?", "Smile, introduce yourself, and ask the other person a friendly, open question."),
    ("Why should you wear a seatbelt?", "A seatbelt holds you in your seat during a crash and greatly reduces the risk of serious injury."),
    ("What is an idiom?", "An idiom is a phrase whose meaning differs from its literal words, like \"break a leg\" meaning good luck."),
    ("What is a continent?", "A continent is one of Earth's seven large landmasses, such as Africa or Asia."),
    ("Write a one-sentence thank-you note to a teacher.", "Thank you for your patience and for making every lesson interesting and inspiring."),
    ("Give one tip for staying healthy in winter.", "Wash your hands often and dress warmly in layers to stay healthy in winter."),
    ("What is the difference between weather and climate?", "Weather is the short-term state of the atmosphere, while climate is the average weather over many years."),
    ("What does a verb tense show?", "A verb tense shows when an action happens: in the past, present, or future."),
    ("Explain what a recipe is.", "A recipe is a list of ingredients and instructions for preparing a dish."),
    ("What does a chef do?", "A chef plans menus and cooks food, often leading a restaurant kitchen."),
    ("How do I keep a houseplant healthy?", "Water the plant when the soil feels dry and place it where it gets the right amount of light."),
    ("What is respect?", "Respect is treating others with consideration and valuing their feelings, rights, and opinions."),
    ("Write a short, friendly greeting for a new neighbor.", "Welcome to the neighborhood! Let us know if you ever need anything."),
    ("Suggest one fun activity for a rainy day.", "Build a blanket fort and watch a favorite movie or play a board game indoors."),
]


# ----------------------------------------------------------------------------- assembly and checks
GENERATORS = {"arithmetic": gen_arithmetic, "units": gen_units, "geography": gen_geography,
              "science": gen_science, "language": gen_language}


def check(category: str, prompt: str, reference: str, answer: str | None) -> None:
    """Fail loudly on a row the judge could not use or that would reward echoing the question."""
    assert prompt.strip() and reference.strip(), (category, prompt)
    assert 3 <= len(reference.split()) <= 30, (category, reference)
    if answer is None:
        return
    nums_in_prompt = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", prompt)}
    if re.fullmatch(r"\d+(?:\.\d+)?", answer):
        assert float(answer) not in nums_in_prompt, ("answer appears in prompt", prompt, answer)
        assert float(answer) in {float(x) for x in re.findall(r"\d+(?:\.\d+)?", reference)}, (reference, answer)
    else:
        word = r"(?<!\w)" + re.escape(answer) + r"(?!\w)"
        assert not re.search(word, prompt, re.I), ("answer appears in prompt", prompt, answer)
        assert re.search(word, reference, re.I), ("answer missing from reference", reference, answer)


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows = [(cat, p, r, a) for cat, gen in GENERATORS.items() for p, r, a in gen(rng)]
    rows += [("open", p, r, None) for p, r in OPEN]
    seen = set()
    for cat, p, r, a in rows:
        check(cat, p, r, a)
        key = p.lower()
        assert key not in seen, ("duplicate prompt", p)
        seen.add(key)
    # Stratified shuffle: shuffle each category, then give its i-th row of n the sort key
    # (i + jitter) / n, so every consecutive slice of the file holds each category in proportion.
    keyed = []
    for cat in [*GENERATORS, "open"]:
        group = [row for row in rows if row[0] == cat]
        rng.shuffle(group)
        keyed += [((i + rng.random()) / len(group), row) for i, row in enumerate(group)]
    keyed.sort(key=lambda kr: kr[0])
    return [{"id": f"p{i:04d}", "category": cat, "prompt": p, "reference": r, "answer": a}
            for i, (_, (cat, p, r, a)) in enumerate(keyed, start=1)]


def main() -> None:
    records = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    counts = Counter(rec["category"] for rec in records)
    print(f"wrote {len(records)} prompts to {OUT}")
    for cat, n in sorted(counts.items()):
        checkable = sum(1 for rec in records if rec["category"] == cat and rec["answer"] is not None)
        print(f"  {cat:<11} {n:>4}  ({checkable} with a checkable answer)")


if __name__ == "__main__":
    main()
