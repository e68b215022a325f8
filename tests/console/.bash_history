stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_061773db''_CONTINUATION> '; PS1='PA_061773db''_$?_PROMPT> '
echo hello; echo world
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_123a1c06''_CONTINUATION> '; PS1='PA_123a1c06''_$?_PROMPT> '
echo hello; echo world
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_ddd43809''_CONTINUATION> '; PS1='PA_ddd43809''_$?_PROMPT> '
false
(exit 7)
true
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_0f33ea60''_CONTINUATION> '; PS1='PA_0f33ea60''_$?_PROMPT> '
false
(exit 7)
true
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_d8b7b13d''_CONTINUATION> '; PS1='PA_d8b7b13d''_$?_PROMPT> '
echo 'PA_d8b7b13d_0_PROMPT'; echo after
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_c128baa7''_CONTINUATION> '; PS1='PA_c128baa7''_$?_PROMPT> '
echo 'PA_c128baa7_0_PROMPT'; echo after
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_da39a5e7''_CONTINUATION> '; PS1='PA_da39a5e7''_$?_PROMPT> '
echo some evidence; exit_with() { return 3; }; exit_with
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_cf32873b''_CONTINUATION> '; PS1='PA_cf32873b''_$?_PROMPT> '
echo some evidence; exit_with() { return 3; }; exit_with
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_ec6e1d04''_CONTINUATION> '; PS1='PA_ec6e1d04''_$?_PROMPT> '
echo 'unbalanced
echo still usable
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_caa96ed7''_CONTINUATION> '; PS1='PA_caa96ed7''_$?_PROMPT> '
echo 'unbalanced
echo still usable
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_d26492ae''_CONTINUATION> '; PS1='PA_d26492ae''_$?_PROMPT> '
echo started; sleep 5
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_a4fcbd80''_CONTINUATION> '; PS1='PA_a4fcbd80''_$?_PROMPT> '
echo started; sleep 5
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_8d1f6ff2''_CONTINUATION> '; PS1='PA_8d1f6ff2''_$?_PROMPT> '
exit 0
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_3c715f98''_CONTINUATION> '; PS1='PA_3c715f98''_$?_PROMPT> '
exit 0
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_269db97e''_CONTINUATION> '; PS1='PA_269db97e''_$?_PROMPT> '
echo visible; echo s3cr3t-hash
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_e065ec6e''_CONTINUATION> '; PS1='PA_e065ec6e''_$?_PROMPT> '
echo hello; echo world
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_5fef6c41''_CONTINUATION> '; PS1='PA_5fef6c41''_$?_PROMPT> '
echo hello; echo world
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_74c19adc''_CONTINUATION> '; PS1='PA_74c19adc''_$?_PROMPT> '
false
(exit 7)
true
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_63b7f210''_CONTINUATION> '; PS1='PA_63b7f210''_$?_PROMPT> '
false
(exit 7)
true
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_eda4dff7''_CONTINUATION> '; PS1='PA_eda4dff7''_$?_PROMPT> '
echo 'PA_eda4dff7_0_PROMPT'; echo after
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_c8d6345b''_CONTINUATION> '; PS1='PA_c8d6345b''_$?_PROMPT> '
echo 'PA_c8d6345b_0_PROMPT'; echo after
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_173d49cc''_CONTINUATION> '; PS1='PA_173d49cc''_$?_PROMPT> '
echo some evidence; exit_with() { return 3; }; exit_with
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_590a9f49''_CONTINUATION> '; PS1='PA_590a9f49''_$?_PROMPT> '
echo some evidence; exit_with() { return 3; }; exit_with
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_61419b0c''_CONTINUATION> '; PS1='PA_61419b0c''_$?_PROMPT> '
echo 'unbalanced
echo still usable
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_8d8472f9''_CONTINUATION> '; PS1='PA_8d8472f9''_$?_PROMPT> '
echo 'unbalanced
echo still usable
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_f66dc1a3''_CONTINUATION> '; PS1='PA_f66dc1a3''_$?_PROMPT> '
echo started; sleep 5
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_b87cb6f6''_CONTINUATION> '; PS1='PA_b87cb6f6''_$?_PROMPT> '
echo started; sleep 5
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_54724147''_CONTINUATION> '; PS1='PA_54724147''_$?_PROMPT> '
exit 0
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_3a65b24c''_CONTINUATION> '; PS1='PA_3a65b24c''_$?_PROMPT> '
exit 0
echo PA_READY_$((6*7))
exec bash --norc --noprofile --noediting
stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; unset PROMPT_COMMAND; PS2='PA_261368e2''_CONTINUATION> '; PS1='PA_261368e2''_$?_PROMPT> '
echo visible; echo s3cr3t-hash
