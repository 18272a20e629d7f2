"""The embedded default model: a tiny pretrained Qwen2-architecture causal LM, built offline.

Nothing can be downloaded in CI or on an air-gapped laptop, so `model.name: tiny` builds its own
small base model from text the package ships, on first use:

1. a byte-level BPE tokenizer (4096 tokens, Qwen's special tokens and ChatML chat template)
   whose vocabulary is learned from the whole bundled LexiLingo sample;
2. a Qwen2 model (hidden 128, 4 layers, tied embeddings) pretrained from random weights as a
   plain causal LM, full weights, in a short seeded torch loop (a few hundred AdamW steps over
   random 128-token windows), on
   - the sample's *prompts only*: each row's system prompt and user input as a ChatML
     conversation with no assistant turn, and
   - the everyday English and Vietnamese paragraphs below, written for this purpose.

No weight is ever trained on an answer of the sample, so every train / eval split of it stays
honest (any data.split_seed or eval_fraction): the eval loss of a LoRA run measures what LoRA
learned from the training rows. The base
knows both languages and the chat markup but has never seen an assistant turn, which is what
LoRA then has to learn: a good learning rate visibly beats a bad one.

The result is cached on disk, keyed by the settings and the text it is built from, so only the
first use pays for the build (under a minute on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_NAMES = ("tiny", "lexiray:tiny")
BUNDLED_DATA = Path(__file__).resolve().parent / "resources" / "lexilingo_sample.jsonl"

TINY_SETTINGS = {
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "seed": 0,
    # Pretraining: steps x batch x block tokens of AdamW (warmup then cosine decay to zero);
    # the written text is repeated text_repeat times in the corpus next to the sample's prompts.
    "pretrain_steps": 288,
    "pretrain_batch": 16,
    "pretrain_block": 128,
    "pretrain_lr": 5e-3,
    "text_repeat": 2,
    "format": 4,  # bump when the build below changes, so stale caches are not reused
}

# Qwen's ChatML turns. The {% generation %} markers let transformers return an assistant
# mask too; lexiray's own masking does not depend on them (real Qwen templates lack them).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def is_tiny(name: str) -> bool:
    return name.strip().lower() in TINY_NAMES


def cache_root() -> Path:
    explicit = os.environ.get("LEXIRAY_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lexiray"


def _cache_key() -> str:
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    digest = hashlib.sha256(json.dumps(TINY_SETTINGS, sort_keys=True).encode())
    digest.update(BUNDLED_DATA.read_bytes())
    # The pretraining corpus also holds the system prompts and the written text below.
    digest.update(json.dumps([DEFAULT_SYSTEM_PROMPTS, DEFAULT_SYSTEM_PROMPT], sort_keys=True).encode())
    digest.update((_ENGLISH_TEXT + _VIETNAMESE_TEXT).encode())
    return digest.hexdigest()[:16]


def _training_texts() -> list[str]:
    """The tokenizer's training text: the whole bundled sample (its vocabulary only)."""
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    texts = list(DEFAULT_SYSTEM_PROMPTS.values()) + [DEFAULT_SYSTEM_PROMPT]
    with BUNDLED_DATA.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.extend(str(value) for value in row.values())
    return texts


def _build_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SETTINGS["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=TINY_SETTINGS["max_position_embeddings"],
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in text.strip().split("\n\n")]


def _pretraining_documents() -> list:
    """The pretraining corpus: every sample row's prompt (system + user turn, no answer) as
    ChatML messages, and the written paragraphs as plain text."""
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    documents: list = []
    with BUNDLED_DATA.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            system = DEFAULT_SYSTEM_PROMPTS.get(row.get("task", ""), DEFAULT_SYSTEM_PROMPT)
            documents.append([{"role": "system", "content": system}, {"role": "user", "content": str(row["input"])}])
    written = _paragraphs(_ENGLISH_TEXT) + _paragraphs(_VIETNAMESE_TEXT)
    documents.extend(written * TINY_SETTINGS["text_repeat"])
    return documents


def _token_stream(tokenizer) -> list[int]:
    """The corpus as one token stream, documents shuffled and separated by <|endoftext|>."""
    documents = _pretraining_documents()
    random.Random(TINY_SETTINGS["seed"]).shuffle(documents)
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for document in documents:
        text = document if isinstance(document, str) else tokenizer.apply_chat_template(document, tokenize=False)
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(separator)
    return stream


def _pretrain(model, tokenizer) -> None:
    """Train every weight of `model` as a causal LM on random windows of the corpus."""
    import torch

    settings = TINY_SETTINGS
    steps, batch, block = settings["pretrain_steps"], settings["pretrain_batch"], settings["pretrain_block"]
    data = torch.tensor(_token_stream(tokenizer), dtype=torch.long)
    generator = torch.Generator().manual_seed(settings["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["pretrain_lr"], betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps)))
    )
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block, (batch,), generator=generator).tolist()
        ids = torch.stack([data[start : start + block] for start in starts])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    log.debug("tiny model pretrained: last loss %.3f over %d corpus tokens", loss.item(), len(data))


def _build_model(directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    settings = TINY_SETTINGS
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings["seed"])
    model = Qwen2ForCausalLM(config)
    _pretrain(model, tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)


def ensure_tiny_model() -> Path:
    """Return the folder of the tiny model + tokenizer, building it on first use."""
    target = cache_root() / f"tiny-qwen2-{_cache_key()}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename: concurrent trials or a crash mid-build
    # never leave a half-written model where a reader would take it for a complete one.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    log.info("building the tiny offline model in %s (first use only, about a minute)", target)
    try:
        _build_tokenizer(staging)
        _build_model(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- written text
# Everyday English and Vietnamese written for the tiny model's pretraining (none of it comes from
# the sample's answers). Paragraphs are separated by blank lines; line breaks inside one are spaces.

_ENGLISH_TEXT = """\
Learning a new language opens many doors. You can make friends from other countries, read books in
their original form and find better jobs. The most important thing is to practise a little every
day.

A: Hi, how was your weekend? B: It was great, thanks! I went hiking with my cousins near the lake.
The weather was perfect. What did you do? A: Nothing special. I stayed at home, cleaned my room and
watched a couple of films.

When you meet someone for the first time, it is polite to introduce yourself and ask a simple
question. For example: "Nice to meet you. I'm Minh. Where are you from?" Listening carefully and
smiling also help the conversation go well.

My sister works as a nurse at a big hospital in the city. She often works at night, so she sleeps
during the day. Although her job is tiring, she loves helping people and she is proud of what she
does.

Could you tell me the way to the railway station? Go straight ahead, turn left at the traffic lights
and walk for about five minutes. The station is opposite a large supermarket. You can't miss it.

Writing is a skill that improves with feedback. A good teacher points out what works well, explains
one or two mistakes clearly and suggests a better way to say the same idea.

Yesterday I was late for work because my bus broke down. I called my manager to explain the
situation, and she told me not to worry. I arrived forty minutes late, but I finished all my tasks
before the evening.

A: I'd like to book a table for four people on Friday evening. B: Certainly. What time would you
like to come? A: Around seven, if possible. B: Let me check... Yes, we have a table by the window at
seven. May I have your name, please?

Exercise is good for both the body and the mind. Even a short walk after dinner can reduce stress
and help you sleep better. Many people find it easier to keep fit when they exercise with a friend.

If you want to remember new words, try to use them in your own sentences. Say them out loud, write
them in a diary and use them when you chat with friends. Words that you use are words that you keep.

The city has changed a lot over the last ten years. There are more tall buildings, wider roads and
new shopping centres, but the traffic has become much worse and the air is not as clean as it used
to be.

A: I'm sorry, I don't understand this exercise. B: No problem. Which part is difficult? A: The
second question. I'm not sure which tense to use. B: Let's look at it together. What time expression
do you see in the sentence?

Good questions keep a conversation alive. Instead of asking questions that can be answered with yes
or no, ask open questions like "What do you enjoy most about your job?" or "How did you get
interested in music?"

Thank you for your email. I'm happy to confirm that the meeting will take place on Tuesday at ten
o'clock in room 204. Please let me know if you need any further information.

Every morning I get up at half past six, have a quick shower and make breakfast for my children.
After I take them to school, I catch the train to the office. I usually get home at about six in the
evening.

A: Excuse me, is this seat free? B: Yes, of course. Please sit down. A: Thanks. Are you going to the
conference too? B: I am. I'm giving a short talk this afternoon about online learning. A: That
sounds interesting. I'll try to come.

Last summer we spent two weeks by the sea. We swam every day, tried lots of local food and visited a
small island by boat. On the last evening there was a beautiful sunset, and nobody wanted to go
home.

Many students feel nervous before an exam. It helps to sleep well the night before, eat a good
breakfast and arrive early. During the exam, read each question carefully and leave some time at the
end to check your answers.

A: What do you usually do in your free time? B: I play badminton with my friends twice a week, and I
like cooking. How about you? A: I'm into photography. I often go out early on Sunday mornings to
take pictures of the city.

The library is open from eight in the morning until nine at night. Students can borrow up to five
books at a time. If you return a book late, you have to pay a small fine, so please check the date
carefully.

Our neighbours are very friendly. When we moved into the flat, they brought us a cake and offered to
help with the boxes. Now we often invite each other for dinner and look after each other's plants
when we go away.

I think the best way to learn is by doing. You can read about swimming for years, but you will only
learn to swim when you get into the water. Languages are the same: you need to speak, listen and
make mistakes.

A: How long have you been learning English? B: For about three years. I started at university, and
now I take evening classes. A: Your pronunciation is really clear. B: Thank you! I listen to a lot
of podcasts, and that helps.

The weather forecast says it will be cloudy in the morning, with some heavy rain in the afternoon.
Temperatures will drop in the evening, so don't forget to take an umbrella and a warm jacket if you
are going out.

Small habits make a big difference. If you learn five new words a day, you will know more than a
thousand new words after a year. Keep your goals realistic, and celebrate every small success along
the way.

A: Can I help you? B: Yes, I'm looking for a birthday present for my mother. A: What does she like?
B: She loves gardening and reading. A: How about this book about flowers? It has lovely pictures. B:
Perfect, I'll take it.

When I was a child, I lived in a small village near the mountains. There was no supermarket, so we
grew our own vegetables and bought fish at the market every Saturday. Life was simple, but I was
very happy there.

Please remember to switch off the lights and close the windows before you leave the classroom. The
last person to leave should also lock the door and return the key to the reception desk.

It is normal to feel tired when you start a new job. There are new people to meet, new systems to
learn and many things to remember. Ask questions, take notes and be patient with yourself during the
first few weeks.

A: Did you watch the match last night? B: Yes, it was amazing! I couldn't believe the last goal. A:
Me neither. I was sure it would end in a draw. B: Are you going to watch the final next week? A:
Definitely.

A good friend listens without judging, tells you the truth even when it is hard to hear and is there
for you when things go wrong. Friendships like that take time to build, but they last for a
lifetime.

Online shopping is convenient because you can compare prices and order things from home. However, it
is sometimes hard to know the real quality of a product, and returning something can take a long
time.

I usually have a cup of tea and some toast for breakfast. On weekends, though, I like to make
pancakes for the whole family. My youngest son always asks for extra honey, and my daughter prefers
fresh fruit on top.

A: Where did you go on holiday this year? B: We went to the mountains in the north. It was cold at
night, but the views were incredible. A: Did you stay in a hotel? B: No, we stayed with a local
family. They were so kind to us.

Our English club meets every Thursday evening at the community centre. Each week, one member chooses
a topic, and everyone discusses it in small groups. New members are always welcome, and there is no
fee.

He has worked at the same bank for fifteen years. He started as a cashier, and now he manages the
whole branch. His colleagues say he is fair, patient and always ready to listen to their ideas.

I'm sorry I couldn't come to your party on Saturday. My flight was delayed, and I didn't get home
until midnight. I hope you had a wonderful time. Let's meet for lunch next week so you can tell me
all about it.

The museum is closed on Mondays, but it is open every other day from nine to five. Entry is free for
children under twelve. There is a nice café on the top floor with a view over the river.

A: Do you know a good place to eat around here? B: There's a small Italian restaurant just around
the corner. The pizza is excellent and it's not too expensive. A: Great, thanks. Do I need to book?
B: Not on a weekday.

She decided to learn the guitar when she was thirty. At first her fingers hurt and she could only
play a few simple songs. She practised for twenty minutes every evening, and after two years she was
playing in a small band.

Rivers and lakes are important for farming, fishing and transport. However, many of them are
polluted by rubbish and chemicals from factories. Cleaning them up is expensive, but it is necessary
for the health of everyone.

A: What are you going to do after you graduate? B: I'm not sure yet. I might look for a job in
marketing, or I might study abroad for a year. A: Both sound exciting. B: Yes, I just need some time
to decide.

When my grandmother was young, she walked five kilometres to school every day. There were no buses
in her village, and the road was often muddy. She still tells us stories about those long walks with
her friends.

Please read the instructions carefully before you start. Write your answers in the boxes provided,
and use a black or blue pen. You have forty-five minutes to complete all the questions.

It was a cold, dark evening, and the streets were almost empty. As she walked home, she noticed a
small cat sitting under a tree. It looked hungry, so she picked it up and carried it home. That cat
has lived with her ever since.

A: How often do you go to the gym? B: Three times a week, usually before work. A: Wow, that's early!
B: It's the only time I'm free. Besides, I feel more awake for the rest of the day.

Working from home has advantages and disadvantages. You save time because you don't travel to the
office, and you can organise your day more freely. On the other hand, it can feel lonely, and it is
harder to separate work from rest.

Thank you so much for the lovely gift. The scarf is beautiful, and the colour is perfect. I wore it
to work today and three people asked me where I bought it. You always choose such thoughtful
presents.

A: Could you help me carry these boxes upstairs? B: Sure, no problem. Are they heavy? A: Some of
them are full of books, so be careful. B: Don't worry. I'll take the lighter ones first.

Our town has a market every Sunday morning. Farmers come from nearby villages to sell vegetables,
eggs and cheese, and there are stalls with clothes, flowers and old books. It is always busy and
full of life.

Before you give a presentation, practise it several times out loud. Time yourself, and ask a friend
to listen and give you honest comments. On the day, speak slowly, make eye contact and don't forget
to breathe.

A: I'm thinking of adopting a dog. B: That's a big decision. Do you have enough space? A: We have a
small garden, and my children really want one. B: Then go for it, but remember that dogs need a lot
of time and attention.

My favourite season is autumn. The air is fresh, the leaves turn red and gold, and it is the perfect
weather for long walks. In the evenings, I like to sit by the window with a hot drink and a good
book.

If I had more free time, I would learn to cook properly. At the moment I only know a few easy
dishes. My friend is a great cook, and she has promised to teach me some of her recipes this summer.

A: Hello, I'd like to return this jacket. It's too small. B: Do you have the receipt? A: Yes, here
it is. B: Would you like a larger size or your money back? A: A larger size, please, if you have one
in blue.

Scientists believe that regular sleep is as important as a healthy diet. Adults need about seven to
nine hours a night. People who sleep too little often find it harder to concentrate and make more
mistakes at work.

The train was crowded, so I stood near the door for the whole journey. A little boy next to me was
reading a comic and laughing quietly. When he noticed me watching, he smiled and showed me his
favourite page.

You don't have to be perfect to be understood. Many people speak English with mistakes and still
communicate very well. What matters most is that you are clear, polite and willing to try again when
something goes wrong.
"""

_VIETNAMESE_TEXT = """\
Tiếng Anh là một ngôn ngữ được sử dụng rộng rãi trên khắp thế giới. Nhiều người Việt Nam học tiếng
Anh từ khi còn nhỏ, ở trường và ở các trung tâm ngoại ngữ. Học một ngôn ngữ mới cần thời gian, sự
kiên nhẫn và luyện tập đều đặn mỗi ngày.

Khi mới bắt đầu, bạn nên học những từ vựng thông dụng nhất trước. Hãy ghi từ mới vào một cuốn sổ
nhỏ, kèm theo nghĩa tiếng Việt và một câu ví dụ. Đọc to câu ví dụ giúp bạn nhớ cách phát âm và cách
dùng từ trong ngữ cảnh.

Ngữ pháp là tập hợp các quy tắc giúp chúng ta ghép từ thành câu. Trong tiếng Anh, một câu thường có
chủ ngữ, động từ và tân ngữ. Ví dụ, trong câu "I read books", "I" là chủ ngữ, "read" là động từ và
"books" là tân ngữ.

Tiếng Việt không chia động từ theo thì, còn tiếng Anh thì có. Người Việt thường dùng các từ như
"đã", "đang", "sẽ" để nói về thời gian. Trong tiếng Anh, động từ thay đổi hình thức: "go" trở thành
"went" ở quá khứ và "will go" ở tương lai.

Danh từ là từ chỉ người, vật, nơi chốn hoặc khái niệm, ví dụ "teacher", "table", "city",
"happiness". Tính từ dùng để miêu tả danh từ, ví dụ "tall", "beautiful", "interesting". Trạng từ
thường bổ nghĩa cho động từ, ví dụ "quickly", "carefully".

Phát âm là một thử thách lớn đối với nhiều người học. Một số âm trong tiếng Anh không có trong tiếng
Việt, chẳng hạn âm "th" trong "think" và "this". Nghe người bản xứ nói và bắt chước theo là cách
luyện tập rất hiệu quả.

Mỗi sáng, Lan thức dậy lúc sáu giờ, uống một cốc nước và nghe một bài podcast tiếng Anh trong khi ăn
sáng. Buổi tối, cô ấy đọc một truyện ngắn và viết nhật ký bằng tiếng Anh. Sau một năm, Lan có thể
nói chuyện tự tin với khách du lịch.

Hà Nội là thủ đô của Việt Nam, còn Thành phố Hồ Chí Minh là thành phố lớn nhất cả nước. Đà Nẵng nổi
tiếng với những bãi biển đẹp, và Huế có nhiều di tích lịch sử. Mỗi năm có hàng triệu khách du lịch
nước ngoài đến thăm Việt Nam.

Khi nói chuyện với người nước ngoài, đừng sợ mắc lỗi. Mắc lỗi là một phần tự nhiên của việc học. Nếu
bạn không hiểu, hãy lịch sự hỏi lại: "Could you say that again, please?" hoặc "What does this word
mean?".

Câu hỏi trong tiếng Anh thường bắt đầu bằng một trợ động từ hoặc một từ để hỏi như "what", "where",
"when", "why", "who" và "how". Trong tiếng Việt, chúng ta thường thêm "không" hoặc "chưa" vào cuối
câu để tạo câu hỏi.

Gia đình tôi có bốn người: bố, mẹ, em gái và tôi. Bố tôi là kỹ sư, mẹ tôi là giáo viên dạy toán ở
một trường trung học. Cuối tuần, cả nhà thường cùng nhau nấu ăn và xem phim.

Phở là món ăn nổi tiếng của Việt Nam, được làm từ bánh phở, nước dùng bò hoặc gà và nhiều loại rau
thơm. Ngoài phở, bánh mì, bún chả và gỏi cuốn cũng được khách du lịch rất yêu thích.

Thời tiết ở miền Bắc có bốn mùa rõ rệt, trong khi miền Nam chỉ có mùa mưa và mùa khô. Vào mùa hè,
trời rất nóng và thường có mưa to vào buổi chiều.

Nhiều sinh viên vừa học vừa làm thêm để có thu nhập và kinh nghiệm. Công việc bán thời gian ở quán
cà phê hay cửa hàng giúp họ rèn luyện kỹ năng giao tiếp, nhưng cũng khiến họ có ít thời gian nghỉ
ngơi hơn.

Để chuẩn bị cho một buổi phỏng vấn xin việc, bạn nên tìm hiểu về công ty, luyện trả lời các câu hỏi
thường gặp và ăn mặc gọn gàng. Hãy đến sớm khoảng mười lăm phút và nhớ mỉm cười khi chào người phỏng
vấn.

Đọc sách là một thói quen tốt. Sách giúp chúng ta mở rộng hiểu biết, học thêm nhiều từ mới và hiểu
cách người khác suy nghĩ. Nếu bạn bận rộn, chỉ cần đọc mười trang mỗi ngày cũng đã rất có ích.

Công nghệ đã thay đổi cách chúng ta học ngoại ngữ. Ngày nay, người học có thể dùng ứng dụng trên
điện thoại, xem video có phụ đề và trò chuyện trực tuyến với người bản xứ ở bất kỳ đâu.

Khi viết một đoạn văn, hãy bắt đầu bằng một câu chủ đề rõ ràng, sau đó đưa ra các ý hỗ trợ và ví dụ
cụ thể. Cuối cùng, một câu kết ngắn gọn sẽ giúp người đọc nhớ ý chính của bạn.

Trong giao tiếp hằng ngày, người Anh thường dùng những cách nói lịch sự như "please", "thank you" và
"excuse me". Khi muốn nhờ ai đó giúp, bạn có thể nói "Could you help me?" thay vì "Help me", vì cách
nói này nhẹ nhàng hơn.

Một số từ tiếng Anh có cách viết giống nhau nhưng nghĩa khác nhau tùy theo ngữ cảnh. Chẳng hạn,
"bank" có thể là ngân hàng hoặc bờ sông. Vì thế, khi tra từ điển, bạn nên đọc kỹ các ví dụ đi kèm.

Thầy giáo của chúng tôi luôn khuyến khích cả lớp đặt câu hỏi. Thầy nói rằng không có câu hỏi nào là
ngớ ngẩn, và mỗi lần hỏi là một lần chúng ta hiểu bài sâu hơn.

Việc ôn tập thường xuyên quan trọng hơn việc học thật nhiều trong một lần. Bộ não nhớ lâu hơn khi
thông tin được lặp lại sau một ngày, một tuần rồi một tháng.

Buổi sáng ở Sài Gòn bắt đầu rất sớm. Người bán hàng rong đi khắp các con hẻm, quán cà phê vỉa hè đã
mở cửa và dòng xe máy nối đuôi nhau trên đường. Nhiều người thích ngồi uống cà phê sữa đá và đọc báo
trước khi đi làm.

Tết Nguyên Đán là dịp lễ quan trọng nhất trong năm của người Việt. Mọi người dọn dẹp nhà cửa, nấu
bánh chưng, đi thăm họ hàng và chúc nhau những điều tốt đẹp. Trẻ em rất thích Tết vì được nhận tiền
lì xì trong những phong bao màu đỏ.

Bạn tôi tên là Nam. Cậu ấy cao, hơi gầy và rất vui tính. Nam thích chơi bóng đá và đọc truyện tranh.
Chúng tôi quen nhau từ năm lớp sáu và đến bây giờ vẫn thường gặp nhau vào mỗi cuối tuần.

Khi đi du lịch nước ngoài, bạn nên chuẩn bị hộ chiếu, vé máy bay, bảo hiểm du lịch và một ít tiền
mặt. Học trước vài câu chào hỏi bằng ngôn ngữ địa phương cũng giúp chuyến đi trở nên dễ dàng và thú
vị hơn.

Tôi thường đi làm bằng xe buýt vì nó rẻ và an toàn. Mất khoảng bốn mươi phút để đến văn phòng, nên
tôi tranh thủ nghe nhạc hoặc ôn lại từ vựng trên đường đi. Thỉnh thoảng, khi trời đẹp, tôi đi xe
đạp.

Một bữa ăn gia đình Việt Nam thường có cơm, một món mặn, một món rau và một bát canh. Mọi người ngồi
quanh mâm, gắp thức ăn cho nhau và trò chuyện về những chuyện xảy ra trong ngày.

Nghe là kỹ năng mà nhiều người học bỏ qua. Thật ra, nếu nghe nhiều, bạn sẽ quen với tốc độ nói, ngữ
điệu và cách nối âm của người bản xứ. Hãy bắt đầu với những đoạn hội thoại ngắn, sau đó tăng dần độ
khó.

Khi không biết một từ, đừng vội tra từ điển ngay. Hãy thử đoán nghĩa của từ dựa vào các từ xung
quanh và ý chung của cả câu. Sau đó, kiểm tra lại bằng từ điển để xem mình đoán đúng hay sai.

Trong lớp học, cô giáo chia chúng tôi thành từng nhóm nhỏ. Mỗi nhóm phải thảo luận một chủ đề và
trình bày trước lớp bằng tiếng Anh. Lúc đầu ai cũng ngại, nhưng dần dần mọi người nói tự nhiên hơn.

Câu khẳng định dùng để nói một điều là đúng, câu phủ định dùng để nói một điều là không đúng, còn
câu nghi vấn dùng để hỏi. Trong tiếng Anh, câu phủ định thường cần thêm "not", ví dụ "I do not like
coffee".

Mạo từ là một phần khó đối với người Việt vì tiếng Việt không có mạo từ. Trong tiếng Anh, "a", "an"
và "the" xuất hiện rất thường xuyên, nên người học cần chú ý quan sát cách người bản xứ dùng chúng
trong câu.

Thành ngữ là những cụm từ có nghĩa khác với nghĩa của từng từ riêng lẻ. Ví dụ, "break the ice" không
có nghĩa là đập vỡ băng mà là làm cho không khí bớt căng thẳng khi mọi người mới gặp nhau.

Nhiều người Việt nhầm lẫn giữa các cặp từ có cách phát âm gần giống nhau, chẳng hạn "ship" và
"sheep", hay "live" và "leave". Để phân biệt, bạn nên luyện nghe từng cặp và chú ý độ dài của nguyên
âm.

Mùa thu Hà Nội rất đẹp. Trời se lạnh, lá vàng rơi trên những con phố nhỏ và trong không khí có mùi
hoa sữa. Đây là mùa mà nhiều người chọn để đi dạo quanh hồ Hoàn Kiếm.

Em trai tôi đang học lớp chín và chuẩn bị thi vào lớp mười. Mỗi ngày em học ở trường đến chiều, sau
đó đi học thêm toán và tiếng Anh. Cả nhà đều mong em đạt kết quả tốt trong kỳ thi sắp tới.

Khi nhận được lời khen, người Việt thường khiêm tốn từ chối, còn người nói tiếng Anh thường đáp lại
đơn giản bằng "Thank you". Hiểu những khác biệt văn hóa như vậy giúp bạn giao tiếp tự nhiên hơn.

Để viết email trang trọng, bạn nên mở đầu bằng lời chào như "Dear Mr. Smith", trình bày mục đích một
cách ngắn gọn và kết thúc bằng "Best regards" cùng với tên của mình. Tránh dùng từ lóng và câu quá
dài.

Đôi khi một câu đúng ngữ pháp nhưng nghe vẫn không tự nhiên. Lý do là người bản xứ có những cách kết
hợp từ quen thuộc, chẳng hạn họ nói "make a decision" chứ không nói "do a decision".

Chị tôi làm việc ở một công ty du lịch. Công việc của chị là sắp xếp lịch trình, đặt khách sạn và
hướng dẫn khách nước ngoài tham quan. Nhờ vậy, chị nói tiếng Anh rất trôi chảy và có nhiều bạn bè
khắp nơi.

Nếu bạn muốn cải thiện kỹ năng nói, hãy tự nói chuyện với chính mình bằng tiếng Anh. Miêu tả những
gì bạn đang làm, kể lại một ngày của bạn hoặc tập trả lời những câu hỏi đơn giản trước gương.

Trường đại học của tôi có một thư viện rất lớn với hàng nghìn cuốn sách tiếng Anh. Sinh viên có thể
mượn sách trong hai tuần, học nhóm trong các phòng riêng và sử dụng máy tính miễn phí.

Động từ bất quy tắc là những động từ không thêm "-ed" ở quá khứ. Có khá nhiều động từ như vậy, chẳng
hạn "eat", "take", "write", "buy". Cách tốt nhất để nhớ là đọc nhiều và gặp chúng thường xuyên trong
các câu chuyện.

Người ta nói rằng muốn giỏi một ngoại ngữ thì phải sống với nó mỗi ngày. Bạn có thể đổi ngôn ngữ
trên điện thoại sang tiếng Anh, nghe nhạc tiếng Anh và xem phim không có phụ đề tiếng Việt.

Hôm qua trời mưa rất to nên tôi ở nhà cả ngày. Tôi nấu một nồi canh chua, gọi điện cho bà ngoại và
xem lại những bức ảnh cũ. Đến tối, trời tạnh và tôi ra ngoài đi dạo một lúc.

Một bài thuyết trình tốt cần có cấu trúc rõ ràng: phần mở đầu giới thiệu chủ đề, phần thân trình bày
các ý chính và phần kết tóm tắt lại nội dung. Người nói nên nhìn vào khán giả và nói chậm, rõ ràng.

Từ đồng nghĩa là những từ có nghĩa gần giống nhau, nhưng chúng không phải lúc nào cũng thay thế được
cho nhau. Chẳng hạn, "big" và "large" đều có nghĩa là lớn, nhưng trong một số cụm từ cố định, chỉ
một từ là phù hợp.

Sáng chủ nhật, cả nhà tôi thường đi chợ sớm. Mẹ mua rau, thịt và cá cho cả tuần, còn tôi và em gái
thì thích ghé hàng bánh để mua bánh bao nóng. Chợ lúc nào cũng đông vui và đầy màu sắc.

Ông nội tôi năm nay đã tám mươi tuổi nhưng vẫn rất khỏe mạnh. Mỗi sáng ông dậy lúc năm giờ, tập thể
dục trong công viên rồi về nhà uống trà và đọc báo. Ông hay kể cho chúng tôi nghe chuyện ngày xưa.

Khi đến một đất nước mới, bạn nên tìm hiểu về phong tục địa phương. Ở một số nơi, người ta không đi
giày vào nhà, còn ở những nơi khác, việc đến muộn vài phút bị coi là thiếu tôn trọng.

Học trực tuyến giúp người học tiết kiệm thời gian đi lại và có thể học ở bất cứ đâu. Tuy nhiên, nếu
không có kế hoạch rõ ràng, người học rất dễ mất tập trung và bỏ dở giữa chừng.

Bạn có thể luyện viết bằng cách mỗi ngày viết ba câu về những việc mình đã làm. Lúc đầu câu văn có
thể đơn giản, nhưng sau vài tháng bạn sẽ thấy mình viết nhanh hơn và dùng được nhiều từ hơn.

Thành phố của tôi có một công viên lớn ở trung tâm. Buổi chiều, người già đi dạo, trẻ em chơi đùa và
các bạn trẻ tập thể thao. Vào cuối tuần, ở đó thường có các buổi biểu diễn âm nhạc miễn phí.

Khi gặp khó khăn trong học tập, đừng ngại nhờ giúp đỡ. Bạn có thể hỏi thầy cô, hỏi bạn cùng lớp hoặc
tham gia một nhóm học tập. Cùng nhau giải quyết vấn đề thường nhanh và vui hơn là làm một mình.

Cô ấy làm y tá ở bệnh viện tỉnh đã mười năm. Công việc rất vất vả, nhiều hôm phải trực đêm, nhưng cô
luôn vui vẻ và tận tình với bệnh nhân. Ai gặp cô cũng cảm thấy yên tâm.

Một chuyến đi ngắn về quê vào cuối tuần giúp tôi cảm thấy thư giãn. Ở đó không khí trong lành, cánh
đồng lúa xanh mướt và buổi tối rất yên tĩnh. Tôi thường ngủ rất ngon mỗi khi về quê.

Khi xem phim tiếng Anh, bạn có thể bật phụ đề tiếng Anh thay vì tiếng Việt. Cách này giúp bạn vừa
nghe vừa đọc, nhờ đó nhận ra cách viết của những từ mà bạn chỉ nghe thấy.

Nhiều người nghĩ rằng học ngoại ngữ khi đã lớn tuổi là quá muộn. Thực ra, người lớn có nhiều lợi
thế: họ biết cách tự học, có mục tiêu rõ ràng và hiểu rõ điểm mạnh, điểm yếu của bản thân.

Tuần trước, lớp chúng tôi tổ chức một chuyến dã ngoại ra ngoại ô. Chúng tôi cắm trại bên bờ sông,
nấu ăn cùng nhau và chơi nhiều trò chơi. Buổi tối, cả lớp ngồi quanh đống lửa hát và kể chuyện.

Để giữ sức khỏe, bạn nên ăn nhiều rau xanh, uống đủ nước và hạn chế đồ ngọt. Ngoài ra, ngủ đủ giấc
và vận động ít nhất ba mươi phút mỗi ngày cũng rất quan trọng.

Mỗi người học có một phong cách riêng. Có người nhớ tốt khi nhìn hình ảnh, có người nhớ tốt khi
nghe, và có người cần vừa làm vừa học. Hãy thử nhiều cách để tìm ra cách phù hợp nhất với bạn.
"""
