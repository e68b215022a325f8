# Present so that zsh's new-user wizard stays quiet on the serial console.
