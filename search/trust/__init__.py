"""Trust: only this user's Tune state is unpickled, credentials stay out of options and logs, a copied
search folder resumes in place, one driver per search, and every search-folder file is written whole."""
