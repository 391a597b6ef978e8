"""What every part of the project shares and no part owns: file I/O (`qwenvl_recipes.io`)."""
