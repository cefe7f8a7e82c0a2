"""``tailor audit``: which catalog labels look wrong and which products are listed twice."""
