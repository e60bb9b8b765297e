from llm_jax.data import corpus

MARKDOWN = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and
HORATIO_

**HAMLET**  
To be, or not to be: that is the question:  
Whether 'tis nobler _\\[Aside]_ in the mind\\--to suffer

**HORATIO**  
My lord?

_Exit HAMLET_

Alone at last.
"""


def test_markdown_to_text_keeps_speeches_drops_markup():
  text = corpus.markdown_to_text(MARKDOWN)
  assert text == (
    'HAMLET:\nTo be, or not to be: that is the question:\n'
    "Whether 'tis nobler  in the mind--to suffer\n\n"
    'HORATIO:\nMy lord?\n\nAlone at last.\n'
  )


def test_embedded_corpus_has_every_play_with_its_genre():
  plays = corpus.load_plays()
  assert len(plays) == 38
  assert {p.genre for p in plays} == {
    'comedies',
    'histories',
    'problems',
    'roman',
    'romances',
    'tragedies',
  }
  hamlet = next(p for p in plays if p.name == 'hamlet')
  assert hamlet.genre == 'tragedies'
  assert hamlet.text.startswith("BERNARDO:\nWho's there?\n")
  assert not any(ch in p.text for p in plays for ch in '*_#\\')


def test_split_holds_out_whole_plays_of_every_genre():
  train, val = corpus.split_plays(corpus.load_plays())
  assert {p.name for p in val} == set(corpus.VALIDATION_PLAYS)
  assert not {p.name for p in train} & {p.name for p in val}
  assert {p.genre for p in val} == {p.genre for p in train}
  train_chars, val_chars = (sum(len(p.text) for p in plays) for plays in (train, val))
  assert 3_500_000 < train_chars and 0.1 < val_chars / (train_chars + val_chars) < 0.2
