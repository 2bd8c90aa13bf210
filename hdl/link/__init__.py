"""The link between host and gateware: the protocol's constants (:mod:`.protocol`), the UART
PHY (:mod:`.uart`), COBS framing (:mod:`.cobs`) and the device end (:mod:`.bridge`)."""
