# The LXC 101 state for `salt-call --local state.apply lxc101` (tests/bench/guest-noop.sh).
nginx:
  pkg.installed: []

/etc/ssl/phoenix/site.pem:
  file.managed:
    - source: salt://files/site.pem
    - mode: '0600'
    - makedirs: True

/var/www/phoenix/index.html:
  file.managed:
    - source: salt://files/index.html
    - makedirs: True

/etc/nginx/conf.d/phoenix-tuning.conf:
  file.managed:
    - source: salt://files/tuning.conf
    - require:
      - pkg: nginx

/etc/nginx/sites-enabled/phoenix.conf:
  file.managed:
    - source: salt://files/phoenix.conf
    - require:
      - pkg: nginx

nginx-service:
  service.running:
    - name: nginx
    - enable: True
    - reload: True
    - watch:
      - file: /etc/ssl/phoenix/site.pem
      - file: /etc/nginx/conf.d/phoenix-tuning.conf
      - file: /etc/nginx/sites-enabled/phoenix.conf
