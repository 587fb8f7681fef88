"""Prompts for the tokenizer fixture (tokens.json) and the text-encoder fixtures.

Each entry exercises something the C tokenizer must reproduce exactly; the
comment says what. Escapes are used for invisible or easily confused code
points so the file can be read and edited safely.
"""

_LONG_1 = (
    "a highly detailed digital painting of an ancient castle on a cliff above a stormy sea, "
    "dramatic lighting, volumetric clouds, crashing waves, seagulls, moss covered stones, "
    "banners waving in the wind, by greg rutkowski and alphonse mucha, trending on artstation, "
    "octane render, unreal engine 5, 8k, sharp focus, intricate, elegant, cinematic composition, "
    "golden hour, rim light, depth of field"
)
_LONG_2 = " ".join(["cat"] * 100)
_LONG_3 = ", ".join(f"tag{i}" for i in range(60))
_LONG_4 = (
    "masterpiece, best quality, ultra-detailed, illustration, 1girl, solo, long hair, looking at viewer, "
    "smile, blue eyes, blonde hair, dress, standing, outdoors, sky, cloud, tree, flower, "
    "cherry blossoms, petals, wind, day, blue sky, scenery, river, bridge, mountain, sunlight, "
    "lens flare, bokeh, photorealistic, extremely detailed CG unity 8k wallpaper"
)
# 75 content tokens exactly fill the window; 76 spill one over.
_EXACT_75 = " ".join(["dog"] * 75)
_OVER_BY_1 = " ".join(["dog"] * 76)
# Truncation lands inside a word that BPE splits into several pieces.
_SPLIT_AT_EDGE = " ".join(["dog"] * 73) + " supercalifragilisticexpialidocious"
_LONG_CJK = "山と川と空の風景、" * 12
# 73..78 content tokens: n_tokens 75..80 around the 77-token window.
_DOGS = {n: " ".join(["dog"] * n) for n in (73, 74, 77, 78)}
# Truncation inside a CJK word, whose bytes BPE merges across ideographs.
_CJK_AT_EDGE = " ".join(["dog"] * 74) + " \u6771\u4eac\u30bf\u30ef\u30fc"
_LONG_EMOJI = "\U0001F600" * 90

PROMPTS = [
    # plain Stable Diffusion prompts
    "a photo of a cat",
    "a photograph of an astronaut riding a horse",
    "A painting of a squirrel eating a burger",
    "portrait of a woman, oil on canvas, rembrandt lighting",
    "a cozy cabin in the snowy woods at night, warm light from the windows",
    "cyberpunk city street, neon signs, rain, reflections, highly detailed",
    "an isometric low poly island floating in the sky",
    "watercolor illustration of a fox in a field of flowers",
    "studio ghibli style landscape with rolling hills",
    "macro photo of a dew drop on a leaf, 100mm lens",
    "(masterpiece:1.2), best quality, [blurry], ((sharp))",
    "a red cube on top of a blue sphere",
    "lowres, bad anatomy, bad hands, text, error, missing fingers",
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "a",
    "x",
    # mixed case
    "A PhOtO oF a CaT",
    "HELLO WORLD",
    "McDonald's iPhone eBay NASA",
    "camelCaseWordsAndPascalCase",
    # punctuation runs
    "!!!",
    "what?!?! no way...",
    "a---b___c***d",
    "(((((())))))",
    "[[[]]]{{{}}}<<<>>>",
    "@#$%^&*~`|\\/",
    "end.",
    ".start",
    "comma,separated,list,of,words",
    "semi;colon:colon",
    "quote \"double\" and 'single'",
    "a+b=c, 2*3=6, 10/2=5",
    "...",
    "\u2014 em dash \u2013 en dash \u2026 ellipsis",
    "\u00ab guillemets \u00bb and \u201cdouble curly\u201d",
    "\u00bfqu\u00e9? \u00a1s\u00ed!",
    # digits and numbers with separators
    "1234567890",
    "3.14159",
    "1,000,000 dollars",
    "version 2.0.1-beta",
    "2023-01-15 12:30:45",
    "100%",
    "$19.99",
    "8k uhd 4K 1080p",
    "-42 +7 1e-5",
    "\u00bd \u00b2 \u2460 \u216b",
    "\u0661\u0662\u0663 \u0967\u0968\u0969",
    "\uff11\uff12\uff13",
    # accents and case mapping
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "ni\u00f1o espa\u00f1ol ma\u00f1ana",
    "\u00fcber m\u00fcnchen gr\u00f6\u00dfe",
    "\u00c5NGSTR\u00d6M \u00c6SIR \u00d8RESUND",
    "stra\u00dfe STRASSE \u1e9e",
    "\u0130stanbul \u0131s\u0131k",
    "\u039f\u0394\u039f\u03a3",
    "\u039f\u0394\u039f\u03a3 \u039f\u0394\u039f\u03a3.",
    "\u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3 \u03a3",
    "\u1f08\u1f50\u1fb3",
    "\u1f48\u0394\u03a5\u03a3\u03a3\u0395\u038e\u03a3 \u03bb\u03cc\u03b3\u03bf\u03c2 \u039b\u038c\u0393\u039f\u03a3",
    "\u0401\u043b\u043a\u0430 \u0451\u0436\u0438\u043a \u0429\u0418 \u0490\u0407",
    "\u0141\u00f3d\u017a \u017b\u00f3\u0142\u0107",
    "\u010de\u0161tina \u0159\u00ed\u010d",
    "na\u00efve fa\u00e7ade co\u00f6perate",
    # combining marks (NFC composes some, not others)
    "e\u0301",
    "cafe\u0301",
    "a\u0308o\u0308u\u0308",
    "q\u0307 x\u0323\u0302",
    "\u0301leading combining mark",
    "a\u0323\u0301 o\u0301\u0323 s\u0307\u0323",
    "\u1e9b\u0323 \u212b \u2126 \u0344",
    "z\u0351\u0352a\u0353\u0354l\u0355g\u0356o\u0357",
    "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8",
    # emoji
    "\U0001F600",
    "\U0001F431 \U0001F436 \U0001F98A",
    "I \u2764\ufe0f NY",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family",
    "\U0001F469\U0001F3FD\u200d\U0001F4BB",
    "\U0001F1EF\U0001F1F5 \U0001F1FA\U0001F1F8 \U0001F1E9\U0001F1EA",
    "\U0001F3F3\ufe0f\u200d\U0001F308",
    "sunset\U0001F305beach\U0001F3D6\ufe0f",
    "\U0001F44D\U0001F3FB\U0001F44D\U0001F3FF",
    "1\ufe0f\u20e3 #\ufe0f\u20e3",
    "\U0001F469\U0001F3FD\u200d\U0001F680 \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F9D1\U0001F3FF\u200d\U0001F91D\u200d\U0001F9D1\U0001F3FB",
    # CJK: ideographs, kana and hangul are letters; one run is one piece
    "\u732b\u306e\u5199\u771f",
    "\u4e00\u53ea\u53ef\u7231\u7684\u732b",
    "\u5c71\u6c34\u753b\uff0c\u9ad8\u6e05",
    "\u3072\u3089\u304c\u306a \u30ab\u30bf\u30ab\u30ca",
    "\u30b9\u30bf\u30b8\u30aa\u30b8\u30d6\u30ea",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4",
    "cat\u732bdog\u72d7",
    "\U00020000\U0002A700 \u3400 \uf900",
    "\uff08\u5168\u89d2\u62ec\u5f27\uff09\u3002",
    "\u6771\u4eac",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u306e\u591c\u666f",
    "\u4e2d\u6587 English \u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4",
    # scripts
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u041c\u0418\u0420!",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
    "\u0532\u0561\u0580\u0565\u0582",
    "\u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627 \u0661\u0669",
    "\u0915\u093c\u093f \u0930\u093e\u092e \u0968\u0966\u0968\u096a",
    # apostrophes and contractions
    "it's a cat's toy",
    "don't won't can't",
    "they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "it\u2019s the cat\u2019s toy",
    "rock 'n' roll",
    "'s 't 're 've 'm 'll 'd",
    "o'clock ''double'' '''",
    # HTML entities (not unescaped: no ftfy)
    "salt &amp; pepper",
    "&lt;tag&gt;",
    "it&#39;s",
    "&quot;quoted&quot; &nbsp; &#x27;",
    # whitespace
    "a\tb",
    "line one\nline two",
    "crlf\r\nline",
    "multiple     spaces    here",
    "   leading and trailing   ",
    "\u00a0non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "en\u2002em\u2003thin\u2009hair\u200a",
    "line\u2028separator\u2029paragraph",
    "",
    " ",
    "\t\n \r",
    "\u3000\u00a0",
    "\u1680ogham\u202fnarrow\u205fmath\u0085nel",
    "\u180emongolian \u200bzwsp \u2060wj are not spaces",
    "\u001c\u001d\u001e\u001f separators",
    # control and format characters: kept, in the punctuation class (not \s, not letters)
    "bell\u0007char",
    "esc\u001b[31mred",
    "del\u007fete",
    "zero\u200bwidth",
    "soft\u00adhyphen",
    "\ufeffbom at start",
    "replacement\ufffdchar",
    "private\ue000use",
    "unassigned\u0378cp",
    "\u0085next line",
    "vt\u000bff\u000c",
    "nul\u0000byte",
    "mid\ufeffbom \ufeff",
    "\u200eleft\u200f right \u202aembed\u202c \u2066isolate\u2069",
    "a\u200cb\u200dc \u034fgrapheme joiner",
    # literal special tokens: found after lowercasing, so in any case
    "<|startoftext|>a photo<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|EndOfText|> cat <|StartOfText|>",
    "<|endoftext|><|endoftext|><|startoftext|>",
    "< |endoftext| > <|endoftext",
    "<|\u017ftartoftext|> <|\u0130ndoftext|>",
    "x<|endoftext|>y",
    # code points whose tables differ between Unicode versions
    "\u1c89\u1c8a \ua7cb\ua7dc",
    "\U00010d50\U00010d70 \U00010d40",
    "\U00016ea0\U00016ebb",
    "\U00013460\U00013461",
    "x\u07fd\u0301 x\u0301\u07fd",
    "\U00011935\U00011930 \U00011938",
    "\u1ac0\u0316",
    # fullwidth and compatibility forms (no NFKC)
    "\uff21\uff22\uff23 \uff41\uff42\uff43",
    "\uff28\uff45\uff4c\uff4c\uff4f\uff01",
    "\ufb01ne \ufb02ower",
    "\u2160\u2161\u2162",
    "\u24b6\u24b7\u24b8",
    "\U0001D400\U0001D401\U0001D402",
    # odd words
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "zzzzqqqxxxjjj",
    "www.example.com/path?q=1",
    "user@example.com",
    "#hashtag @mention",
    "snake_case_identifier",
    # long prompts (around and over 75 content tokens)
    _LONG_1,
    _LONG_2,
    _LONG_3,
    _LONG_4,
    _EXACT_75,
    _OVER_BY_1,
    _SPLIT_AT_EDGE,
    _DOGS[73],
    _DOGS[74],
    _DOGS[77],
    _DOGS[78],
    _CJK_AT_EDGE,
    _LONG_CJK,
    _LONG_EMOJI,
]

# Prompts for the text-encoder fixtures: small, but covering the empty prompt,
# truncation, and multi-byte input.
EMBED_PROMPTS = [
    "a photo of a cat",
    "",
    "A PAINTING of a squirrel, eating a burger!",
    _LONG_1,
    "\u732b\u306e\u5199\u771f \U0001F431\u2764\ufe0f",
    "cyberpunk city street, neon signs, rain, reflections, highly detailed",
    "caf\u00e9 \u00fcber stra\u00dfe",
    "(masterpiece:1.2), best quality, 8k",
]
