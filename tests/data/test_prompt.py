"""The prompt text, byte for byte, for hand-made examples."""

from e2urec.data.prompt import BOOK, Profile, build_prompt, stars


def test_prompt_without_profile():
    text = build_prompt(
        [("Heat (1995)", 4.0), ("Up (2009)", 1.0), ("Jaws (1975)", 3.5)], "Alien (1979)"
    )
    assert text == (
        "The user watched the following movies in order in the past, and rated them:\n"
        "['0. Heat (1995) (4 stars)', '1. Up (2009) (1 star)', '2. Jaws (1975) (3.5 stars)']\n"
        "Based on the movies the user has watched, deduce if the user will like the movie "
        "***Alien (1979)***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )


def test_prompt_with_profile_and_quotes_chosen_by_python():
    profile = Profile(gender="female", age="25-34", job="writer")
    text = build_prompt([("Schindler's List (1993)", 5)], "Fargo (1996)", profile)
    assert text == (
        "The user is a female. Her job is writer. Her age is 25-34.\n"
        "She watched the following movies in order in the past, and rated them:\n"
        '["0. Schindler\'s List (1993) (5 stars)"]\n'
        "Based on the movies she has watched, deduce if she will like the movie ***Fargo (1996)***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )


def test_books_and_male_pronouns():
    text = build_prompt([("Dune", 2)], "Emma", Profile(gender="male"), BOOK)
    assert text.startswith("The user is a male.\nHe read the following books in order")
    assert "Based on the books he has read, deduce if he will like the book ***Emma***." in text


def test_stars():
    assert [stars(1), stars(1.0), stars(2), stars(0.5), stars(4.5)] == [
        "1 star",
        "1 star",
        "2 stars",
        "0.5 stars",
        "4.5 stars",
    ]
