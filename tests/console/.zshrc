# A grml-like prompt: rebuilt before every command (so PS1= does not stick), colour escapes,
# NUL padding, a right prompt, the last exit code in red, bracketed paste left on.
setopt prompt_subst
precmd() {
  local rc=$?
  local code=''
  (( rc != 0 )) && code=$'%{\e[31m%}'"${rc}"$'%{\e[0m%} '
  PS1=$'root%{\e[39m%}%{\e[0m%}%{\0\0%}@archiso %{\e[1m%}%~ %{\e[0m%}%{\0\0%}'"${code}"'# '
  RPS1=$'%{\e[34m%}%*%{\e[0m%}'
}
