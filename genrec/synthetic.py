"""The built-in synthetic catalog of the demo: themed products and users who follow shopping journeys.

Example:
    >>> items, interactions = make_synthetic(n_items=240, n_users=10)
    >>> len(items) > 0 and len(interactions) > 0
    True
"""

from __future__ import annotations

import random

# Each theme is a shopping journey: product types in the order people tend to buy them, so the next item
# depends on the last one (sequence signal) and not only on what is popular or textually similar.
_THEMES = {
    "3D Printing": ["PLA filament", "PETG filament", "print bed sheet", "nozzle set", "build plate adhesive",
                    "filament dryer", "resin vat", "UV curing station", "calipers", "deburring tool"],
    "Soldering": ["soldering iron", "lead-free solder wire", "flux pen", "desoldering braid", "helping hands",
                  "fume extractor", "tip cleaner", "heat shrink tubing", "wire stripper", "multimeter"],
    "Lab Glassware": ["borosilicate beaker", "Erlenmeyer flask", "graduated cylinder", "volumetric flask",
                      "glass funnel", "test tube rack", "pipette bulb", "wash bottle", "stirring rod", "petri dish"],
    "Aquarium": ["glass aquarium tank", "canister filter", "aquarium heater", "LED aquarium light", "water test kit",
                 "water conditioner", "gravel vacuum", "air pump", "fish net", "aquarium thermometer"],
    "Woodworking": ["wood glue", "bar clamp", "chisel set", "block plane", "sanding block", "wood finish oil",
                    "marking gauge", "dovetail saw", "dust mask", "workbench vise"],
    "Electrical Repair": ["electrical tape", "wire nuts", "voltage tester", "cable ties", "conduit clamp",
                          "circuit breaker finder", "crimping tool", "terminal connectors", "outlet tester",
                          "fish tape"],
    "Janitorial": ["trash can liners", "microfiber mop", "floor cleaner concentrate", "spray bottle",
                   "nitrile gloves", "paper towel dispenser", "wet floor sign", "squeegee", "dust pan", "degreaser"],
    "Food Service": ["disposable food containers", "deli paper", "portion cups", "aluminum foil pans", "food labels",
                     "cutting board", "kitchen thermometer", "hairnets", "sheet pan", "squeeze bottle"],
    "Safety": ["safety glasses", "earplugs", "hard hat", "high-visibility vest", "work gloves", "first aid kit",
               "eye wash station", "respirator cartridge", "knee pads", "fall protection harness"],
    "Fasteners": ["wood screws", "hex bolts", "lock washers", "nylon lock nuts", "threaded rod", "drywall anchors",
                  "rivets", "cotter pins", "machine screw assortment", "thread locker"],
    "Adhesives": ["epoxy adhesive", "super glue", "hot glue sticks", "hot glue gun", "construction adhesive",
                  "double-sided tape", "silicone sealant", "caulk gun", "glue spreader", "adhesive remover"],
    "Microscopy": ["compound microscope", "prepared slides", "blank glass slides", "cover slips", "slide box",
                   "immersion oil", "lens cleaning paper", "microscope camera", "stain kit", "dissecting kit"],
    "Hydroponics": ["grow light", "nutrient solution", "pH test kit", "net pots", "rockwool cubes", "air stone",
                    "timer outlet", "reservoir tub", "seedling tray", "EC meter"],
    "Plumbing": ["PTFE thread tape", "pipe wrench", "PVC cement", "PVC primer", "compression fitting",
                 "ball valve", "pipe cutter", "drain snake", "plumber's putty", "hose clamp"],
    "Welding": ["welding helmet", "welding gloves", "MIG wire", "welding magnet", "anti-spatter spray",
                "chipping hammer", "wire brush", "welding blanket", "tungsten electrode", "clamp pliers"],
    "Measurement": ["digital caliper", "tape measure", "spirit level", "laser distance meter", "combination square",
                    "micrometer", "feeler gauge", "angle finder", "stud finder", "dial indicator"],
    "Packaging": ["shipping boxes", "bubble wrap", "packing tape", "tape dispenser", "poly mailers",
                  "packing peanuts", "shipping labels", "stretch wrap", "box cutter", "kraft paper roll"],
    "Electronics Prototyping": ["breadboard", "jumper wires", "resistor kit", "capacitor kit", "LED assortment",
                                "microcontroller board", "USB logic analyzer", "bench power supply",
                                "perfboard", "IC socket set"],
    "Painting": ["painter's tape", "paint roller", "angled brush", "drop cloth", "paint tray", "primer",
                 "wall spackle", "putty knife", "paint stirrer", "extension pole"],
    "HVAC": ["air filter", "duct tape", "capacitor", "condensate pump", "fin comb", "refrigerant gauge set",
             "thermostat", "duct sealant", "vacuum pump", "coil cleaner"],
    "Sewing & Textiles": ["sewing thread", "fabric scissors", "seam ripper", "pins", "measuring tape", "rotary cutter",
                          "cutting mat", "bobbins", "needle assortment", "iron-on interfacing"],
    "Lubricants": ["penetrating oil", "white lithium grease", "silicone spray", "dry lubricant", "grease gun",
                   "gear oil", "chain lube", "shop rags", "oil drain pan", "funnel set"],
    "Abrasives": ["sandpaper assortment", "sanding discs", "flap wheel", "grinding wheel", "polishing compound",
                  "buffing wheel", "wire wheel", "steel wool", "file set", "rubbing block"],
    "Batteries & Power": ["AA batteries", "AAA batteries", "battery charger", "coin cell batteries",
                          "battery tester", "9V batteries", "power bank", "battery organizer", "extension cord",
                          "surge protector"],
}
_BRANDS = ["Apex", "Stanford Supply", "Norcross", "BlueRidge", "Kestrel", "Ironclad Pro", "Vantage", "Pinnacle",
           "Redwood", "Summit Tools", "Clearwater", "Northstar", "Everbuilt", "Hartwell", "Crescent Lab", "Marlow",
           "Tidewater", "Granite", "Falcon", "Lakeside", "Orion", "Maple & Co", "Sterling", "Brightline"]
_ADJECTIVES = ["Professional", "Heavy-Duty", "Compact", "Premium", "Industrial", "Precision", "Economy",
               "Reusable", "Deluxe", "Lightweight", "Commercial-Grade", "Universal"]
_SPECS = ["10-Pack", "2-Pack", "Large", "Small", "1 lb", "500 ml", "Black", "Blue", "12 in", "6 ft", "Set of 3",
          "100 Count", "Clear", "Red", "250 g", "3/4 in"]
_USES = ["for workshop and home use", "for labs and classrooms", "for professional contractors",
         "for hobbyists and makers", "for commercial facilities", "for daily maintenance work"]


def make_synthetic(n_items: int = 3000, n_users: int = 4000, seed: int = 0):
    """A catalog of themed products and users whose purchases follow latent interests and shopping journeys.

    Each user has one or two themes and a favourite brand; the next product type usually follows the theme's
    journey order, so a model that reads the history beats both popularity and pure text similarity.
    Returns (items, interactions) with interactions as (user_id, item_id, timestamp) tuples.
    """
    rng = random.Random(seed)
    themes = list(_THEMES)
    per_type = max(2, round(n_items / sum(len(t) for t in _THEMES.values())))
    items, by_type = [], {}
    for theme in themes:
        brands = rng.sample(_BRANDS, 6)
        for ptype in _THEMES[theme]:
            ids = []
            for _ in range(per_type):
                iid = str(len(items))
                brand, adj, spec = rng.choice(brands), rng.choice(_ADJECTIVES), rng.choice(_SPECS)
                items.append({
                    "item_id": iid,
                    "title": f"{brand} {adj} {ptype.title()} - {spec}",
                    "description": f"{adj} {ptype} {rng.choice(_USES)}. Part of our {theme.lower()} range; {spec}.",
                    "brand": brand,
                    "categories": f"Industrial & Scientific > {theme} > {ptype.title()}",
                    "theme": theme,
                })
                ids.append(iid)
            by_type[(theme, ptype)] = ids
    # Zipf-like popularity inside each product type.
    weights = [1.0 / (r + 1) ** 0.8 for r in range(per_type)]
    interactions = []
    for u in range(n_users):
        user = f"U{u}"
        user_themes = rng.sample(themes, rng.choice([1, 1, 2]))
        brand = items[int(by_type[(user_themes[0], _THEMES[user_themes[0]][0])][0])]["brand"]
        day = rng.uniform(0, 300)
        theme = user_themes[0]
        step = rng.randrange(len(_THEMES[theme]))
        for _ in range(rng.randint(5, 16)):
            if len(user_themes) > 1 and rng.random() < 0.2:
                theme = rng.choice(user_themes)
                step = rng.randrange(len(_THEMES[theme]))
            journey = _THEMES[theme]
            ptype = journey[step % len(journey)]
            candidates = by_type[(theme, ptype)]
            loyal = [c for c in candidates if items[int(c)]["brand"] == brand]
            pick = rng.choice(loyal) if loyal and rng.random() < 0.5 else rng.choices(candidates, weights)[0]
            interactions.append((user, pick, day))
            day += rng.uniform(0.5, 10)
            step += 1 if rng.random() < 0.8 else rng.randint(2, 4)
    return items, interactions
