"""Regenerate ``diffsketch/data/prompts.txt``, the default prompt list for CDST.

CDST (docs/method.md §6) fits a PCA Gaussian over the text embeddings of a varied prompt set. The
authors never said which corpus they used, so this project writes its own: hand-written word
lists (subjects grouped so that each group gets settings that make sense for it, media, art
styles, lighting and camera terms) combined by a few templates.

The output is fully deterministic: the combinations are drawn with a small self-contained PRNG
(splitmix64) instead of ``random``, whose ``choice``/``shuffle`` are not promised to stay the
same across Python versions. Running this script must reproduce the committed file byte for byte
(tests/test_conditions.py checks it).

    python tools/make_prompts.py                 # rewrite diffsketch/data/prompts.txt
    python tools/make_prompts.py --output x.txt  # write elsewhere
    python tools/make_prompts.py --check         # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "diffsketch" / "data" / "prompts.txt"
DEFAULT_COUNT = 2400
SEED = 20240109  # arXiv v1 date of the paper; any fixed number would do

# Characters that ComfyUI or its frontend give a meaning to inside a prompt: parentheses are
# weights, square and curly brackets / '|' are dynamic-prompt syntax, '\' escapes.
FORBIDDEN_CHARACTERS = "()[]{}|\\"


def words(text: str) -> list[str]:
    """A hand-written word list: comma-separated phrases, wrapped freely over lines."""
    return [" ".join(item.split()) for item in text.split(",") if item.strip()]


# --- media: how the picture is made --------------------------------------------------------------

MEDIA_GENERAL = words(
    """
    a photo of, a photograph of, a high resolution photo of, a close-up photo of,
    a black and white photo of, a vintage photo of, a polaroid photo of, a film photo of,
    a watercolor painting of, an oil painting of, an acrylic painting of, a gouache painting of,
    a pencil drawing of, a pencil sketch of, a charcoal drawing of, an ink drawing of,
    a pen and ink illustration of, a line drawing of, a digital painting of,
    a digital illustration of, an anime illustration of, a cartoon drawing of,
    a comic book panel showing, a children's book illustration of, a 3d render of,
    a claymation still of, a low poly render of, a pixel art image of, a woodblock print of,
    a linocut print of, an impressionist painting of, a pastel drawing of, a cinematic still of,
    a flat vector illustration of, a crayon drawing of, an engraving of,
    """
)

MEDIA_PEOPLE = words(
    """
    a portrait of, a high resolution portrait of, a candid photo of, a studio portrait of,
    a close-up portrait of, a full body photo of, a street photo of, a fashion photo of,
    a character design sheet of,
    """
)

MEDIA_ANIMALS = words(
    """
    a wildlife photo of, a nature documentary still of, a scientific illustration of,
    a field guide illustration of,
    """
)

MEDIA_PETS = words(
    """
    a portrait of, a cute photo of, a studio portrait of,
    """
)

MEDIA_SMALL = words(
    """
    a macro photo of, a scientific illustration of, a botanical style illustration of,
    """
)

MEDIA_OBJECTS = words(
    """
    a product photo of, a studio photo of, a still life painting of, a technical drawing of,
    """
)


MEDIA_FOOD = words(
    """
    a food photo of, a studio photo of, a still life painting of, an overhead photo of,
    """
)

MEDIA_PLACES = words(
    """
    an aerial photo of, a drone shot of, a vintage travel poster of, a matte painting of,
    a panoramic photo of, a postcard of,
    """
)

MEDIA_BUILDINGS = words(
    """
    an architectural photo of, an architectural sketch of, a blueprint style drawing of,
    """
)

MEDIA_VEHICLES = words(
    """
    a press photo of, a toy model of, a technical illustration of, a magazine photo of,
    """
)

# --- subjects and the settings that suit them ---------------------------------------------------

LAND_ANIMALS = words(
    """
    a horse, a black horse, a white horse, a pony, a grey donkey, a cow, a calf, a sheep, a lamb,
    a goat, a pig, a red fox, a grey wolf, a brown bear, a polar bear, a panda, a koala, a kangaroo,
    a lion, a lioness, a tiger, a leopard, a cheetah, an elephant, a baby elephant, a giraffe,
    a zebra, a rhinoceros, a hippopotamus, a camel, a deer, a fawn, a moose, a reindeer,
    a wild boar, a bison, a llama, an alpaca, a monkey, a gorilla, an orangutan, a sloth, a raccoon,
    a badger, a lynx, a snow leopard, a meerkat, an armadillo,
    """
)
LAND_ANIMAL_SETTINGS = words(
    """
    in mud, in a meadow, in tall grass, in the snow, on a beach, in a forest, by a river,
    in the rain, on a rock, in a field of flowers, on a farm, in the desert, on a mountain slope,
    in shallow water, under a tree, at a watering hole, in the jungle, in autumn leaves,
    at the edge of a lake, running across a field, resting in the shade, looking at the camera,
    in a misty valley, on a dirt road, in a zoo enclosure, on the savanna, in a snowy forest,
    drinking from a stream,
    """
)

PETS = words(
    """
    a tabby cat, a black cat, a white cat, a ginger cat, a siamese cat, a kitten,
    a golden retriever, a labrador, a corgi, a dalmatian, a husky, a beagle, a pug, a poodle,
    a dachshund, a german shepherd, a border collie, a puppy, a rabbit, a hamster, a guinea pig,
    a parrot on a perch, a goldfish in a bowl,
    """
)
PET_SETTINGS = words(
    """
    on a sofa, in a garden, by the window, on a rug, in the snow, on a beach, playing with a ball,
    sleeping in a basket, in a living room, on a wooden floor, in the park, wearing a red scarf,
    on a bed, in a cardboard box, on a kitchen chair, in the grass, on a porch, under a blanket,
    next to a fireplace, in a flower pot,
    """
)

BIRDS = words(
    """
    an owl, a barn owl, a snowy owl, a rooster, a hen, a duck, a swan, a goose, a parrot, a toucan,
    a flamingo, a peacock, a bald eagle, a hawk, a falcon, a hummingbird, a crow, a raven, a pigeon,
    a robin, a sparrow, a blue jay, a kingfisher, a heron, a stork, a seagull, a pelican, a magpie,
    a woodpecker,
    """
)
BIRD_SETTINGS = words(
    """
    on a branch, in flight, on a fence post, by a pond, in the snow, on a rooftop, in a garden,
    over the sea, on a rock, in the rain, in a nest, at sunrise, on a telephone wire, in a wetland,
    among cherry blossoms, on a mossy log, in a pine tree, on a windowsill, by the shore,
    in a farmyard,
    """
)

SEA_ANIMALS = words(
    """
    a dolphin, a humpback whale, a blue whale, an orca, a sea turtle, an octopus, a jellyfish,
    a seahorse, a clownfish, a manta ray, a shark, a seal, a sea lion, a walrus, a penguin,
    a starfish, a school of fish, a squid, a lobster, an otter,
    """
)
SEA_SETTINGS = words(
    """
    in the ocean, near a coral reef, in clear blue water, in an aquarium, jumping out of the waves,
    swimming in deep water, just below the surface, among seaweed, near the shore, in a kelp forest,
    on a rocky shore, in a tide pool, under the ice, in murky green water, by a shipwreck,
    """
)

SMALL_CREATURES = words(
    """
    a butterfly, a monarch butterfly, a moth, a honeybee, a bumblebee, a dragonfly, a ladybug,
    a beetle, a grasshopper, a praying mantis, an ant, a spider, a snail, a frog, a tree frog,
    a toad, a chameleon, a gecko, a lizard, a snake, a turtle, a crocodile, a hedgehog, a mouse,
    a squirrel, a chipmunk, a crab,
    """
)
SMALL_SETTINGS = words(
    """
    on a leaf, on a flower, on a mossy rock, in the grass, on a tree trunk, after the rain,
    in a garden, on a windowsill, in the jungle, by a pond, on a mushroom, among fallen leaves,
    on a stone path, in the sand, on a twig, covered in dew drops,
    """
)

PEOPLE = words(
    """
    a man, a woman, an old man, an old woman, a young man, a young woman, a girl, a boy, a child,
    a baby, a teenager, an elderly couple, a family, two friends, a fisherman, a farmer, a chef,
    a baker, a nurse, a doctor, a firefighter, a police officer, a soldier, a knight in armor,
    a samurai, a cowboy, an astronaut, a ballerina, a dancer, a musician, a guitarist, a violinist,
    a painter, a street vendor, a businessman, a businesswoman, a scientist, a student, a monk,
    a queen, a king, a princess, a pirate, a wizard, a witch, a sailor, a mountain climber,
    a surfer, a skateboarder, a cyclist, a runner, a boxer, a woman with curly hair,
    a man with a beard, a girl with freckles, a boy in a school uniform, a woman in a red dress,
    a man in a suit, a man wearing glasses, a woman with short hair, a girl with braids,
    an old man with a white beard, a main character in japanese cartoon, an anime girl,
    an anime boy, a superhero, a detective, a gardener, a tailor, a blacksmith, a carpenter,
    a photographer,
    """
)
PEOPLE_SETTINGS = words(
    """
    in a cafe, on a city street, in a park, at the beach, in a library, in a kitchen, in a field,
    on a train, in the rain, in the snow, at a market, on a stage, in a studio, by a window,
    in an office, on a mountain top, in a garden, at a train station, reading a book, laughing,
    holding an umbrella, riding a bicycle, walking a dog, sitting on a bench, looking out to sea,
    smiling at the camera, in a workshop, at a festival, in a forest, on a rooftop, in a classroom,
    in a desert, on a boat, at night in the city, in a sunflower field, in a crowded subway,
    """
)

OBJECTS = words(
    """
    a teapot, a ceramic vase, a desk lamp, an old clock, a pocket watch, a typewriter,
    a vintage camera, a pair of sneakers, a leather boot, a backpack, a guitar, a violin,
    a stack of books, an open book, a candle, a lantern, a globe, a kettle, a coffee mug,
    a wine glass, a glass bottle, a potted plant, a cactus in a pot, a bouquet of roses,
    a sunflower, a vase of tulips, a seashell, a pine cone, a pair of glasses, a straw hat,
    a teddy bear, a toy robot, a chess board, a crystal ball, a sword, a shield, an old key,
    a padlock, an umbrella, a mirror, a rotary telephone, a radio, a laptop, a pair of headphones,
    a microphone, a wristwatch, a fountain pen, a paintbrush, a hammer, an anchor, an hourglass,
    a birdcage, a treasure chest, a music box, a compass, a skateboard, a baseball glove,
    a football, a kite, a paper lantern, a leather bag, a wooden spoon, a tea set, a bonsai tree,
    a snow globe, a jar of marbles,
    """
)
OBJECT_SETTINGS = words(
    """
    on a wooden table, on a white background, on a shelf, on a windowsill, on a desk, in a workshop,
    on a kitchen counter, in an attic, on the floor, in a shop window, on a marble surface,
    in the grass, on a bed, in a museum display, in the sand, covered in dust, in a dark room,
    on a stone wall, on a velvet cloth, next to a window, on a bookshelf, in a flea market,
    floating in the air, on a grey background,
    """
)

FURNITURE = words(
    """
    a wooden chair, an armchair, a grand piano, a rocking chair, a sofa, a bookcase,
    a four-poster bed, a dining table, a writing desk, a chest of drawers, a bathtub, a wardrobe,
    a stool, a hammock, a piano bench, a garden bench, a floor lamp,
    """
)
FURNITURE_SETTINGS = words(
    """
    in a living room, in an empty room, in a showroom, in an attic, on a porch, in a sunlit room,
    by a window, in a cabin, in a palace hall, in a garden, in an abandoned house,
    on a white background, in a loft apartment, in a hotel lobby,
    """
)

FOOD = words(
    """
    a bowl of ramen, a slice of pizza, a cheeseburger, a plate of pasta, a bowl of salad,
    a stack of pancakes, a croissant, a loaf of bread, a chocolate cake, a strawberry cake,
    a cup of coffee, a cup of tea, a glass of orange juice, a bowl of fruit, a basket of apples,
    a pile of oranges, a slice of watermelon, a bunch of grapes, a lemon, a pineapple,
    a plate of sushi, a bowl of soup, a taco, a donut, a cupcake, an ice cream cone,
    a roast chicken, a steak, a bowl of rice, a sandwich, a bowl of cherries, a jar of honey,
    a wheel of cheese, a plate of fried eggs, a bowl of noodles, a pumpkin, a bunch of carrots,
    an apple pie, a plate of cookies, a basket of dumplings, a bowl of curry, a plate of tacos,
    a bagel, a glass of milk, a bowl of cereal, a fruit tart, a pot of stew, a tray of macarons,
    """
)
FOOD_SETTINGS = words(
    """
    on a wooden table, on a white plate, on a kitchen counter, in a restaurant, at a street market,
    on a picnic blanket, on a marble table, in a bakery window, in a cafe, on a rustic table,
    with steam rising, on a checkered tablecloth, on a cutting board, on a dark background,
    at a food stall, on a breakfast tray,
    """
)

BUILDINGS = words(
    """
    a lighthouse, a castle, a medieval castle, a gothic cathedral, a small chapel, a temple,
    a pagoda, a mosque, a windmill, a wooden cabin, a log cabin, a farmhouse, a red barn, a cottage,
    a victorian house, a modern house, a glass skyscraper, a city skyline, an old bridge,
    a stone bridge, a suspension bridge, a train station, a clock tower, a ruined tower,
    a greek temple, an ancient ruin, a pyramid, a palace, a villa, a tree house, a greenhouse,
    an old factory, a water tower, a fountain, a narrow alley, a spiral staircase,
    an abandoned house, a library interior, a cathedral interior, a subway station, a market hall,
    a harbor, a houseboat, a mountain hut, a row of townhouses, a monastery, an observatory,
    a bell tower,
    """
)
BUILDING_SETTINGS = words(
    """
    at dusk, at dawn, at night, in the fog, in winter, in the snow, on a hill, by the sea,
    on a cliff, in a small village, in the city, surrounded by trees, under a stormy sky, in spring,
    in autumn, reflected in a lake, in the rain, under the stars, in the desert, in the mountains,
    covered in ivy, after a snowfall, at sunset,
    """
)

PLACES = words(
    """
    a mountain range, a switzerland mountain, a snowy mountain, a volcano, a waterfall,
    a river valley, a lake, a pine forest, a bamboo forest, a birch forest, a desert, sand dunes,
    a canyon, a glacier, a beach, a rocky coast, a tropical island, a meadow, a field of sunflowers,
    a lavender field, a rice terrace, a vineyard, rolling hills, a swamp, a cave, a frozen lake,
    a harbor town, a busy street, a quiet village, a city at night, a market square,
    a train platform, a country road, a flower garden, a city park, a farm, an orchard, a ski slope,
    a campsite, a fjord, a coral reef, a mountain lake, a wheat field, an old town square,
    a foggy moor,
    """
)
PLACE_SETTINGS = words(
    """
    at sunrise, at sunset, at dusk, under a clear blue sky, in the fog, after the rain, in winter,
    in autumn, in spring, in summer, under the northern lights, under a starry sky, during a storm,
    in the mist, with a rainbow, under heavy clouds, seen from above, at noon, in the snow,
    under a full moon,
    """
)

ROAD_VEHICLES = words(
    """
    a red car, a vintage car, a sports car, a pickup truck, a school bus, a double-decker bus,
    a motorcycle, a scooter, a bicycle, a tractor, a fire truck, an ambulance, a taxi, a police car,
    a camper van, a horse-drawn carriage, a delivery van, a jeep, a race car, a tank,
    a steam locomotive, a bullet train, a tram, a freight train,
    """
)
ROAD_SETTINGS = words(
    """
    on a country road, on a city street, in a parking lot, on a highway, at a gas station,
    in a garage, in the desert, on a bridge, in the snow, in the rain, at night in the city,
    by the sea, in a field, on a mountain pass, in a small town, covered in mud, parked by a cafe,
    in a forest, at a crossroads,
    """
)

WATER_VEHICLES = words(
    """
    a sailboat, a fishing boat, a rowboat, a cargo ship, a yacht, a canoe, a kayak, a submarine,
    a pirate ship, a gondola, a ferry, a paddle steamer,
    """
)
WATER_SETTINGS = words(
    """
    in a harbor, on a calm lake, on a stormy sea, on a river, at the dock, in the fog, at sunset,
    near a lighthouse, in a canal, on the open ocean, by a sandy beach, among icebergs,
    """
)

AIR_VEHICLES = words(
    """
    a hot air balloon, an airplane, a biplane, a helicopter, a rocket, a spaceship, a zeppelin,
    a glider, a paper airplane, a seaplane,
    """
)
AIR_SETTINGS = words(
    """
    in the sky, above the clouds, over a city, over the mountains, at sunrise, over the sea,
    on a runway, in a hangar, over a desert, in a stormy sky, against a blue sky, at night,
    """
)

# (name, subjects, settings, media specific to the group); the general media are added to all.
GROUPS = [
    ("land animals", LAND_ANIMALS, LAND_ANIMAL_SETTINGS, MEDIA_ANIMALS),
    ("pets", PETS, PET_SETTINGS, MEDIA_PETS),
    ("birds", BIRDS, BIRD_SETTINGS, MEDIA_ANIMALS),
    ("sea animals", SEA_ANIMALS, SEA_SETTINGS, MEDIA_ANIMALS),
    ("small creatures", SMALL_CREATURES, SMALL_SETTINGS, MEDIA_SMALL),
    ("people", PEOPLE, PEOPLE_SETTINGS, MEDIA_PEOPLE),
    ("people", PEOPLE, PEOPLE_SETTINGS, MEDIA_PEOPLE),  # twice: people vary the most
    ("objects", OBJECTS, OBJECT_SETTINGS, MEDIA_OBJECTS),
    ("furniture", FURNITURE, FURNITURE_SETTINGS, MEDIA_OBJECTS),
    ("food", FOOD, FOOD_SETTINGS, MEDIA_FOOD),
    ("buildings", BUILDINGS, BUILDING_SETTINGS, MEDIA_BUILDINGS + MEDIA_PLACES),
    ("places", PLACES, PLACE_SETTINGS, MEDIA_PLACES),
    ("places", PLACES, PLACE_SETTINGS, MEDIA_PLACES),
    ("road vehicles", ROAD_VEHICLES, ROAD_SETTINGS, MEDIA_VEHICLES),
    ("boats", WATER_VEHICLES, WATER_SETTINGS, MEDIA_VEHICLES),
    ("aircraft", AIR_VEHICLES, AIR_SETTINGS, MEDIA_VEHICLES),
]

# --- modifiers -----------------------------------------------------------------------------------

STYLES = words(
    """
    watercolor, oil painting, pencil sketch, ink wash, anime style, cartoon style, ukiyo-e,
    art nouveau, art deco, impressionism, cubism, pop art, flat illustration, isometric, low poly,
    pixel art, cel shading, vaporwave, cyberpunk, steampunk, fantasy art, surrealism, minimalism,
    baroque, photorealistic, hyperrealistic, concept art, storybook illustration, line art,
    charcoal sketch, stained glass, mosaic, papercut, embroidery, graffiti, chalk drawing, manga,
    sumi-e, gothic, retro 1980s,
    """
)

LIGHTING = words(
    """
    golden hour, soft morning light, harsh midday sun, dramatic lighting, soft diffused light,
    backlit, rim light, candlelight, neon lights, moonlight, overcast light, studio lighting,
    warm light, cold blue light, volumetric light, sunbeams, low key lighting, high key lighting,
    blue hour, firelight,
    """
)

CAMERA = words(
    """
    35mm film, 50mm lens, 85mm portrait lens, wide angle, telephoto lens, shallow depth of field,
    bokeh, long exposure, macro lens, aerial view, low angle, high angle, eye level shot,
    symmetrical composition, rule of thirds, sharp focus, high detail, 4k, 8k, highly detailed,
    film grain, tilt-shift, fisheye lens, medium format, close-up, wide shot,
    """
)

BACKGROUNDS = words(
    """
    simple background, white background, plain background, grey background,
    """
)


class SplitMix64:
    """A tiny PRNG whose output is fixed by its definition, whatever the Python version."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.state = seed & self.MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n  # bias is ~n/2**64: irrelevant here, and the output stays fixed

    def pick(self, items):
        return items[self.below(len(items))]


def compose(rng: SplitMix64, subjects, settings, media) -> str:
    """One prompt from one group, in one of several shapes that people actually type."""
    subject = rng.pick(subjects)
    setting = rng.pick(settings)
    shape = rng.below(20)
    if shape < 8:  # "a watercolor painting of a lighthouse at dusk"
        return f"{rng.pick(media)} {subject} {setting}"
    if shape < 11:
        return f"{rng.pick(media)} {subject} {setting}, {rng.pick(LIGHTING)}"
    if shape < 13:
        return f"{rng.pick(media)} {subject} {setting}, {rng.pick(CAMERA)}"
    if shape < 15:  # "a horse in mud, watercolor"
        return f"{subject} {setting}, {rng.pick(STYLES)}"
    if shape < 17:
        return f"{subject} {setting}, {rng.pick(STYLES)}, {rng.pick(LIGHTING)}, {rng.pick(CAMERA)}"
    if shape < 18:  # no setting: "a pencil sketch of a teapot"
        return f"{rng.pick(media)} {subject}"
    # tag style, like the paper's "a main character in japanese cartoon, simple background, male"
    return f"{subject}, {rng.pick(STYLES)}, {rng.pick(BACKGROUNDS)}"


def build_prompts(count: int = DEFAULT_COUNT, seed: int = SEED) -> list[str]:
    """``count`` distinct prompts, groups taken in turn so that every group is well represented."""
    rng = SplitMix64(seed)
    seen: set[str] = set()
    prompts: list[str] = []
    attempts = 0
    while len(prompts) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError(f"could not find {count} distinct prompts; add words to the lists")
        _, subjects, settings, media = GROUPS[len(prompts) % len(GROUPS)]
        prompt = " ".join(compose(rng, subjects, settings, MEDIA_GENERAL + media).split()).lower()
        if prompt in seen:
            continue
        bad = [c for c in FORBIDDEN_CHARACTERS if c in prompt]
        if bad:
            raise ValueError(f"prompt {prompt!r} contains {bad}, which ComfyUI would parse")
        seen.add(prompt)
        prompts.append(prompt)
    return prompts


def render(prompts: list[str]) -> bytes:
    return ("\n".join(prompts) + "\n").encode("utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the list")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of prompts")
    parser.add_argument("--check", action="store_true", help="only check that --output is up to date")
    args = parser.parse_args(argv)
    data = render(build_prompts(args.count))
    if args.check:
        current = args.output.read_bytes() if args.output.is_file() else b""
        if current != data:
            print(f"{args.output} is stale: run python tools/make_prompts.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.count} prompts to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
