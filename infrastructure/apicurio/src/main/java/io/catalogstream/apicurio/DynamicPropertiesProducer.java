package io.catalogstream.apicurio;

import java.util.List;

import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

/**
 * Stands in for Apicurio's "config-index" Quarkus extension, whose deployment module
 * (io.apicurio:apicurio-common-app-components-config-index-deployment:0.1.18.Final) is not on
 * Maven Central. That build step only lists the properties that can be changed at run time through
 * the admin API; an empty list leaves every property at its static value.
 */
@ApplicationScoped
public class DynamicPropertiesProducer {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(List.of());
    }
}
