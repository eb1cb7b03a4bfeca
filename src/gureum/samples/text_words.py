"""Word lists and sentence templates for the text sample, all written for gureum.

Kept apart from the generator so the prose can grow without touching the code that assembles it.
"""

from __future__ import annotations

LABELS = (
    "Haneul",
    "Mosaic Row",
    "Tidewater",
    "Juniper & Ash",
    "Little Kiln",
    "North Orchard",
    "Saltmarsh",
    "Paper Moon",
    "Quiet Harbour",
    "Hollow Pine",
)

NAMES = (
    "Ada", "Bram", "Cleo", "Dara", "Emil", "Hana", "Ines", "Iris", "Jae", "Juno", "Kit", "Lior",
    "Marlow", "Mina", "Noor", "Otto", "Pia", "Rafe", "Seo", "Sunhee", "Tove", "Uma", "Vera",
    "Wren", "Yuki",
)  # fmt: skip

GARMENTS: dict[str, tuple[str, ...]] = {
    "shirt": ("tee", "T-shirt", "shirt", "polo", "top"),
    "jacket": ("jacket", "blazer", "overshirt", "chore coat", "bomber"),
    "dress": ("dress", "wrap dress", "sundress", "slip dress", "shirt dress"),
    "skirt": ("skirt", "midi skirt", "pleated skirt", "A-line skirt", "wrap skirt"),
    "trousers": ("trousers", "chinos", "wide-leg trousers", "cargo trousers", "culottes"),
}

FEATURES: dict[str, tuple[str, ...]] = {
    "shirt": (
        "a ribbed crew neck", "a relaxed drop shoulder", "a chest pocket", "short rolled sleeves",
        "a boxy cut", "a soft V neck", "side slits at the hem", "a longer back hem",
    ),
    "jacket": (
        "notched lapels", "horn buttons", "two patch pockets", "a quilted lining", "a storm flap",
        "raglan sleeves", "a stand collar", "an inside pocket for a phone", "a two-way zip",
    ),
    "dress": (
        "a tie waist", "adjustable straps", "a flared skirt", "puff sleeves", "a square neckline",
        "hidden side pockets", "a smocked bodice", "a midi length", "a button-through front",
    ),
    "skirt": (
        "an elastic waistband", "knife pleats", "a button front", "a gentle A-line", "deep pockets",
        "a bias cut", "a back slit", "a wide waistband",
    ),
    "trousers": (
        "a high waist", "pressed creases", "a drawstring waist", "wide legs", "tapered legs",
        "belt loops", "a zip fly", "turn-up hems", "deep side pockets",
    ),
}  # fmt: skip

FABRICS: dict[str, str] = {
    "organic cotton": "is soft, breathable and grown without synthetic pesticides",
    "washed linen": "gets softer with every wash and keeps you cool on hot days",
    "merino wool": "is warm without bulk and rarely needs washing",
    "heavy denim": "is woven on old shuttle looms and fades to match the way you move",
    "silk": "drapes beautifully and feels cool against the skin",
    "recycled polyester": "is spun from used bottles and dries in an hour",
    "cotton poplin": "is crisp, light and easy to iron",
    "brushed flannel": "is brushed on both sides for a cosy hand",
    "corduroy": "has a fine wale that holds its colour for years",
    "Tencel twill": "is made from wood pulp in a closed loop and hangs without creasing",
    "seersucker": "has a puckered weave that lifts off the skin in summer",
    "boiled wool": "is dense, wind-resistant and never frays at the edge",
}

COLOURS = (
    "navy", "black", "cream", "sand", "olive", "burgundy", "mustard", "rust", "sky blue",
    "blush pink", "forest green", "charcoal", "indigo", "tomato red", "teal", "lavender",
)  # fmt: skip
PLURAL_NOUNS = frozenset(GARMENTS["trousers"])  # "a pair of ..."
PATTERNS = ("plain", "striped", "polka-dot", "gingham", "checked", "pinstriped")
FITS = ("relaxed", "slim", "oversized", "tailored", "easy", "cropped", "straight")
OCCASIONS = (
    "for long weekends", "for the office and after", "for warm city evenings",
    "for the first cold morning of autumn", "for summer weddings", "for everyday errands",
    "for travel", "for slow Sundays", "for gallery openings", "for the school run",
)  # fmt: skip
REASONS = (
    "it should last for years", "you asked for it", "pockets are never optional",
    "comfort comes first", "it is built for real life", "it looks better with every wash",
    "small details matter",
)  # fmt: skip
PLACES = ("Busan", "Porto", "Lyon", "Leicester", "Oaxaca", "Kyoto", "Izmir", "Bandung", "Daegu")
CARE = (
    "Machine wash cold and hang to dry.",
    "Wash at 30 degrees, inside out.",
    "Dry clean only.",
    "Hand wash and dry flat.",
    "Cool iron if needed.",
    "Wash with similar colours and skip the dryer.",
)
SIZING = (
    "It runs true to size.",
    "It runs small, so size up if you are between sizes.",
    "It runs large, so size down for a closer fit.",
    "The model is {height} cm tall and wears size {size}.",
)

OPENINGS = (
    "The {Name} is {a_item} {fit} {pattern} {noun} in {colour} {fabric}.",
    "Meet the {Name}: {a_item} {fit} {noun} cut from {colour} {fabric}.",
    "Our {Name} {noun} comes in {pattern} {colour} {fabric} with {a_fit} {fit} fit.",
    "{A_item} {fit} {noun} in {colour} {fabric}, made {occasion}.",
    "From the {label} collection, the {Name} is {a_item} {fit} {pattern} {noun} in {colour}.",
)
FEATURE_LINES = (
    "It has {f1} and {f2}.",
    "Details include {f1}, {f2} and {f3}.",
    "Look for {f1}.",
    "We gave it {f1} because {reason}.",
    "Expect {f1}, {f2} and {a_fit} {fit} shape that works {occasion}.",
)
FABRIC_LINE = "The {fabric} {fact}."
MADE_LINE = "Made in small batches in {place}."
PAIR_LINE = "Pair it with our {other_colour} {other}."

REVIEWS: dict[str, tuple[str, ...]] = {
    "positive": (
        "Love the {colour}, exactly like the photos.",
        "The {fabric} feels lovely and the fit is perfect.",
        "Fits true to size and washes well.",
        "My third piece from {label} and still my favourite.",
        "Great pockets!",
        "Got so many compliments at work.",
        "Beautifully made, you can tell someone cared.",
        "Wore it all summer and it still looks new.",
    ),
    "neutral": (
        "Nice {fabric} but the sleeves are a bit long.",
        "The {colour} is darker than expected, otherwise fine.",
        "Good quality, runs slightly small.",
        "It is fine for the price.",
        "Comfortable, though the cut is boxier than I hoped.",
        "Took a while to arrive but it was worth the wait.",
    ),
    "negative": (
        "The seams came apart after two washes.",
        "Much too tight across the shoulders, sending it back.",
        "The {colour} faded after the first wash.",
        "The {fabric} is thinner than it looks.",
        "Arrived late and a button was missing.",
        "Nothing like the photos, disappointed.",
        "It shrank a full size in a cold wash.",
    ),
}
