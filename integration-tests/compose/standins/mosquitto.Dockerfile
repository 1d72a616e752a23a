# Test-only Mosquitto stand-in: Debian's mosquitto package (in the debootstrapped base)
# laid out like eclipse-mosquitto (/mosquitto/config/mosquitto.conf, /mosquitto/data).
ARG BASE
FROM ${BASE}
RUN mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && printf 'listener 1883\nallow_anonymous true\n' > /mosquitto/config/mosquitto.conf \
    && chown -R mosquitto:mosquitto /mosquitto
EXPOSE 1883
CMD ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
